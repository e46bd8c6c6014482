"""Entry points of the collector: the RADIUS accounting listener."""
