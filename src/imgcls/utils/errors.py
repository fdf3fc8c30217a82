"""Errors a user can cause and fix, reported as one clear message instead of a traceback."""


class UserError(Exception):
    """A mistake in config, data or files: the message must say what to do about it."""
