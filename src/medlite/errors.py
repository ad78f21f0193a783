"""The errors medlite reports as one line (no traceback unless --debug), and whose fault each is.

`exit_code` tells a script what to do next: 2 means fix the input (a recipe key, a value, a file,
the data) and rerun; 1 means medlite (or a library it drives, e.g. ONNX Runtime's quantizer) failed
on input that was fine, so rerunning with `--debug` and reporting the traceback is the way on.
"""


class MedliteError(Exception):
    """Base of medlite's reported errors; the message is one line."""

    exit_code = 1


class UsageError(MedliteError):
    """Bad input: a recipe key, a value, a file, a name. The message names the fault."""

    exit_code = 2


class DataError(UsageError):
    """The data cannot be used as given: missing file, unreadable image, too few classes, ..."""


class InternalError(MedliteError):
    """medlite, or a library it drives, failed on valid input: not the user's fault (exit 1).

    Raise it `from` the original exception, so `--debug` shows where the failure came from.
    """


class ExportFailed(InternalError):
    """An export the recipe asked for made no file at all (every conversion failed): the run cannot
    deliver what it was asked for, so it stops with one line and exit code 1. Not the user's
    fault (a missing package is a UsageError, caught before the run), so not a UsageError."""

    exit_code = 1


def unknown_name(kind: str, name: str, known: list[str]) -> str:
    """"unknown KIND 'x' (did you mean 'y'?)", or the known names listed: the registries' one message."""
    import difflib  # standard library; local so that importing the error classes stays instant

    hint = difflib.get_close_matches(name, known, n=1)
    return f"unknown {kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else f"; choose from {', '.join(known)}")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (a library's may run to many), or its type's name when it
    has none: what a one-line error quotes of the failure beneath it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
