"""Use cases and ports of the collector: screening accounting requests, publishing records."""
