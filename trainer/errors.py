"""The trainer's user errors: bad input or an impossible request, the message the whole
explanation. cli.py prints it as one `error:` line and exits non-zero (as for tracekit's)."""


class TrainerError(Exception):
    """Bad trainer input: the message is the whole explanation."""
