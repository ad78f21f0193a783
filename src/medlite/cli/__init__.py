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
a pointer to `--debug`); 130 interrupted. `--debug` shows the traceback instead.
"""

from __future__ import annotations

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
        from medlite import __version__

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


def main() -> None:
    """The `medlite` entry point: run the app, turn what ends it into one line and an exit code."""
    options = CliState()
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
        if exit_.exit_code == 130 and isinstance(exit_.__cause__, KeyboardInterrupt):
            print("medlite: interrupted", file=sys.stderr)
        sys.exit(exit_.exit_code)
    except typer.Abort as err:
        # Typer turns an EOFError raised anywhere inside a command into Abort: that is a fault
        # (e.g. a file that ended early), not the user pressing Ctrl-D at a prompt.
        if isinstance(err.__cause__, EOFError) and not options.debug:
            print(f"medlite: unexpected error: {_debug_hint(f'EOFError: {err.__cause__}')}", file=sys.stderr)
            sys.exit(1)
        if options.debug:
            raise
        print("medlite: interrupted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("medlite: interrupted", file=sys.stderr)
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
    except Exception as err:
        if options.debug:
            raise
        print(f"medlite: unexpected error: {_debug_hint(f'{type(err).__name__}: {_one_line(str(err))}')}", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
