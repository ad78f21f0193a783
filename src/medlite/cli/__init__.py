"""The command line: a thin Typer front that parses, calls the library, prints and exits.

One module per command group (run.py: run, recipes, data; bench.py; deploy.py: predict, serve;
explain.py; study.py: study, tune), all registered here, top to bottom, in the order `--help`
lists them. Shared options (`--debug`, the console) travel in `typer.Context.obj` (a
`medlite.cli.common.CliState`), never in a module global. The command modules import only typer,
the standard library and light medlite modules at module level; everything heavy (torch, the
pipeline, rich tables) is imported inside the command that needs it, so `medlite --help` stays
well under a second.

Exit codes: 0 success; 2 the user's fault (a recipe key, a value, a file, the data: `UsageError`,
one line naming it); 1 an internal failure (`InternalError`, or anything unexpected: one line and
a pointer to `--debug`); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM, whatever the
command was doing then (a library that catches the interrupt itself, as Lightning's trainer does
with `sys.exit(1)`, cannot change that code). `--debug` shows the traceback instead.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from medlite.cli import bench, deploy, evaluate, explain, run, study
from medlite.cli.common import CliState, DebugOpt
from medlite.errors import InternalError, UsageError

app = typer.Typer(
    help="medlite: small, fast, explainable medical image classifiers, measured on the file you deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from medlite.version import __version__

        typer.echo(f"medlite {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_show_version, is_eager=True)
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """medlite: small, fast, explainable medical image classifiers, measured on the file you deploy."""


app.command("run")(run.run)
app.command("recipes")(run.recipes)
app.command("data")(run.data)
app.command("bench", help="Benchmark every variant of a run directory, or one model file (.onnx, .tflite); --soak SECONDS for a resource monitor.")(bench.bench)
app.command("predict")(deploy.predict)
app.command("serve")(deploy.serve)
app.command("evaluate")(evaluate.evaluate)
app.command("models")(evaluate.models)
app.command("explain", help="Explain the variants of a run directory (maps, faithfulness, agreement); rewrites its report.")(explain.explain)
app.command("study", help="Run a study (grid/list x seeds x folds, local or Ray) with statistics and tables.")(study.study)
app.command("tune", help="Tune a recipe's key settings on validation within a time budget (Optuna).")(study.tune)


def _one_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


def _debug_hint(message: str) -> str:
    return f"{message} (rerun with --debug for the traceback)"


INTERRUPTED = "medlite: interrupted; rerun to resume"
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, as a shell reports it


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so that every library's own clean-up for
    Ctrl-C (Lightning's trainer teardown, click's Abort, `atomic_path` removing its temporary)
    runs for SIGTERM too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """Catches SIGINT and SIGTERM for one invocation and remembers the first one: `main` exits with
    its code however the command ended afterwards (returned, swallowed the interrupt, exited 1)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._said = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        raise Interrupted(signum)

    def __enter__(self) -> "_Signals":
        for signum in _SIGNAL_EXIT:
            self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def exit(self) -> None:
        """One line and 130/143 when a signal came; nothing otherwise."""
        if self.signum is not None:
            if not self._said:
                self._said = True
                print(INTERRUPTED, file=sys.stderr)
                sys.stderr.flush()
            sys.exit(_SIGNAL_EXIT[self.signum])


def _stdout_closed() -> None:
    """The reader of our stdout went away (`medlite ... | head -1`): what it wanted it has, so exit 0
    quietly. stdout is pointed at /dev/null first, so the interpreter's last flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(0)


def main() -> None:
    """The `medlite` entry point: run the app, turn what ends it into one line and an exit code."""
    options = CliState()
    with _Signals() as signals:
        try:
            _dispatch(options, signals)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        except BrokenPipeError:
            _stdout_closed()
        except SystemExit as exit_:
            if isinstance(exit_.__context__, BrokenPipeError):  # click turns EPIPE into sys.exit(1)
                _stdout_closed()
            signals.exit()  # an interrupt decides the exit code, whatever code the command ended with
            raise
        except BaseException:
            if not options.debug:
                signals.exit()
            raise
        signals.exit()  # the command returned, but an interrupt came (and something swallowed it)


def _dispatch(options: CliState, signals: _Signals) -> None:
    try:
        # Without standalone mode click returns the code of a `typer.Exit(n)` instead of raising it.
        code = app(standalone_mode=False, obj=options)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UsageError as err:
        if options.debug:
            raise
        print(f"medlite: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except InternalError as err:
        # medlite (or a library it drives) failed on valid input: not the user's to fix by editing it.
        if options.debug:
            raise
        print(f"medlite: error: {_debug_hint(_one_line(str(err)) or type(err).__name__)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except typer.Exit as exit_:
        if exit_.exit_code == 130 and isinstance(exit_.__cause__, KeyboardInterrupt) and signals.signum is None:
            print(INTERRUPTED, file=sys.stderr)
        sys.exit(exit_.exit_code)
    except typer.Abort as err:
        # Typer turns an EOFError raised anywhere inside a command into Abort: that is a fault
        # (e.g. a file that ended early), not the user pressing Ctrl-D at a prompt.
        if isinstance(err.__cause__, EOFError) and not options.debug:
            print(f"medlite: unexpected error: {_debug_hint(f'EOFError: {err.__cause__}')}", file=sys.stderr)
            sys.exit(1)
        if options.debug:
            raise
        signals.exit()  # the signal's own code and line
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        signals.exit()
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as err:
        # Typer 0.29 ships its own click (typer._click): its usage errors (no such option or
        # command, bad parameter value) derive from typer.TyperException, not click.ClickException.
        if err.__class__.__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # the help text was already shown; no command given is a usage error
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:
            print(f"medlite: error: {err.format_message()}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except BrokenPipeError:
        raise  # main(): the reader of stdout has gone, exit 0 quietly
    except Exception as err:
        if options.debug:
            raise
        print(f"medlite: unexpected error: {_debug_hint(f'{type(err).__name__}: {_one_line(str(err))}')}", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
