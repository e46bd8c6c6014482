"""Pure rules of the collector: RADIUS wire format, authenticators, accounting records."""
