"""Errors that reach the user as one line and exit code 2 (no traceback unless --debug)."""


class UsageError(Exception):
    """Bad input: a recipe key, a value, a file, a name. The message names the fault."""

    exit_code = 2


class DataError(UsageError):
    """The data cannot be used as given: missing file, unreadable image, too few classes, ..."""


class ExportFailed(Exception):
    """An export the recipe asked for made no file at all (every conversion failed): the run cannot
    deliver what it was asked for, so it stops with one line and exit code 1. Not the user's
    fault (a missing package is a UsageError, caught before the run), so not a UsageError."""

    exit_code = 1
