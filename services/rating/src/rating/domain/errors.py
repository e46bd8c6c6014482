"""Errors of the rating domain."""


class RatingError(Exception):
    pass


class SessionConflict(RatingError):
    """Another worker advanced the same session concurrently; the record is retried."""
