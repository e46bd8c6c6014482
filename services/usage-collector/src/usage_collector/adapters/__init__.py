"""Adapters of the collector's ports: the RADIUS dictionary, NAS registries."""
