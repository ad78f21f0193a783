"""Errors that reach the user as one line and exit code 2 (no traceback unless --debug)."""


class UsageError(Exception):
    """Bad input: a recipe key, a value, a file, a name. The message names the fault."""

    exit_code = 2


class DataError(UsageError):
    """The data cannot be used as given: missing file, unreadable image, too few classes, ..."""
