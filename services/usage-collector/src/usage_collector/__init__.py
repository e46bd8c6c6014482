"""The usage collector: RADIUS accounting from the NAS, verified and published as usage records."""
