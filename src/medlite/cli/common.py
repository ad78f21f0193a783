"""What every command shares: the per-invocation state in `typer.Context.obj`, and the common options.

`medlite.cli.main` makes one `CliState` per invocation and hands it to Typer as the root context's
`obj`; every subcommand's context inherits it. `--debug` (before or after the command name) records
itself there through its callback, so `main` knows whether to show a traceback for the error that
ends the command. No module-level mutable state: two invocations in one process share nothing.

Only typer and the standard library at module level: `medlite --help` must not import torch,
pydantic or rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:  # for annotations only: rich costs ~40 ms to import
    from rich.console import Console


@dataclass
class CliState:
    """One invocation's shared options: `debug` (show tracebacks) and the console commands print to."""

    debug: bool = False
    _console: Any = field(default=None, repr=False)

    @property
    def console(self) -> "Console":
        """A rich console for stdout, made on first use (wide and unwrapped when not a terminal)."""
        if self._console is None:
            # local: rich is only needed once a command prints a table, never for --help.
            from rich.console import Console

            console = Console(highlight=False)
            if not console.is_terminal:  # logs and CI: wide enough for the results table, no wrapping
                console = Console(highlight=False, width=200)
            self._console = console
        return self._console


def state(ctx: typer.Context) -> CliState:
    """This invocation's CliState (made here when a command runs without `main`, e.g. under CliRunner)."""
    return ctx.ensure_object(CliState)


def _record_debug(ctx: typer.Context, value: bool) -> bool:
    if value:
        state(ctx).debug = True
    return value


def check_writable(path: Path, option: str = "--out", *, folder: bool = False, parents: bool = True) -> None:
    """Refuse now, before any work, an output the command could not write: exit 2 naming `path`.

    `folder`: `path` is a directory the command makes (else a file); `parents`: the command makes
    missing parent folders itself (else the parent must exist). Tried by creating (and at once
    removing) an anonymous file in the nearest existing folder: permission bits, a read-only
    mount and root's rights all answer as they will for the real write.
    """
    import errno
    import os
    import tempfile

    from medlite.errors import UsageError

    if path.exists() and path.is_dir() != folder:
        raise UsageError(f"{option} {path}: is {'a file, not a folder' if folder else 'a folder, not a file'}")
    target = path if folder else path.parent
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder")
    if existing != target and not parents:
        raise UsageError(f"{option} {path}: folder {target} does not exist")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        hint = " (disk full?)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise UsageError(f"{option} {path}: cannot write in {existing}: {reason}{hint}") from None


def data_root(option: Path | None) -> Path:
    """--data-root, else $MEDLITE_DATA_ROOT, else ~/.cache/medlite."""
    # local: medlite.data pulls in numpy and the dataset code, which --help does not need.
    from medlite.data.medmnist import default_data_root

    return option.expanduser() if option else default_data_root()


RecipeArg = Annotated[Optional[str], typer.Argument(help="recipe YAML path or built-in name (default: breastmnist)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe key, e.g. teacher.epochs=5")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="dataset folder (default: $MEDLITE_DATA_ROOT, else ~/.cache/medlite)")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks", callback=_record_debug)]
