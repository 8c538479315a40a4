"""Errors that reach the user as one line on stderr and a non-zero exit (see cli.py)."""


class UserError(Exception):
    """Bad input or an impossible request: the message is the whole explanation."""
