"""Errors a user can cause and fix, reported as one clear message instead of a traceback."""


def one_line(err: Exception, limit: int = 300) -> str:
    """A library's error (torch's weights-only explanation, a list of mismatched tensors, a Hub
    reply) as one line of a UserError, cut at `limit` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(Exception):
    """A mistake in config, data or files: the message must say what to do about it."""
