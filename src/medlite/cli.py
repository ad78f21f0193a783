"""The command line: a thin Typer front that parses, calls the pipeline, prints and exits.

Exit codes: 0 success, 2 bad input (recipe, value, file, data) with one line naming the fault,
1 for anything unexpected. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.errors import UsageError

app = typer.Typer(
    help="medlite: small, fast, explainable medical image classifiers, measured on the file you deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_debug = {"on": False}


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
) -> None:
    """medlite: small, fast, explainable medical image classifiers, measured on the file you deploy."""

RecipeArg = Annotated[Optional[str], typer.Argument(help="recipe YAML path or built-in name (default: breastmnist)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe key, e.g. teacher.epochs=5")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="dataset folder (default: $MEDLITE_DATA_ROOT, else ~/.cache/medlite)")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # logs and CI: wide enough for the results table, no wrapping
        console = Console(highlight=False, width=200)
    return console


def _data_root(option: Path | None) -> Path:
    from medlite.data.medmnist import default_data_root

    return option.expanduser() if option else default_data_root()


@app.command()
def run(
    recipe: RecipeArg = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="run directory (default: runs/<recipe name>[-<data id>])")] = None,
    data_root: DataRootOpt = None,
    set_: SetOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="start over instead of resuming")] = False,
    debug: DebugOpt = False,
) -> None:
    """Carry out a recipe: train, distil, compress, export, evaluate, benchmark, report."""
    _debug["on"] = debug
    from medlite.recipe import load_recipe
    from medlite.runstate import default_run_dir

    parsed = load_recipe(recipe, set_ or [])
    default_out = out is None
    out = out or default_run_dir(parsed)
    console = _console()
    console.print(f"medlite run {parsed.name} -> {out}")
    from medlite.pipeline import run_pipeline
    from medlite.report import print_table

    results = run_pipeline(parsed, out, _data_root(data_root), fresh=fresh, say=console.print, progress=None,
                           default_out=default_out)
    print_table(results, console)
    cached = len(results["cached_stages"])
    console.print(
        f"done in {results['timings']['total']:.1f}s"
        + (f" ({cached} stages unchanged, reused)" if cached else "")
        + f"; results: {out / 'results.json'}, report: {out / 'report.html'}"
    )


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    from medlite.recipe import DEFAULT_RECIPE, builtin_recipes, describe_builtin

    for name, path in sorted(builtin_recipes().items()):
        marker = " (default)" if name == DEFAULT_RECIPE else ""
        typer.echo(f"{name:<16} {describe_builtin(path)}{marker}")


@app.command()
def data(recipe: RecipeArg = None, data_root: DataRootOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the dataset summary: source, classes, images per split and class, size and channels."""
    _debug["on"] = debug
    from rich.table import Table

    from medlite.data import load_dataset
    from medlite.recipe import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    summary = load_dataset(parsed.data, _data_root(data_root), parsed.seed).summary()
    console = _console()
    console.print(f"{summary['name']} ({summary['source']}): {summary['origin']}")
    console.print(
        f"{summary['num_classes']} classes; split: {summary['split']}; native {summary['native_size']} px x "
        f"{summary['native_channels']} ch -> model input {summary['image_size']} px x {summary['channels']} ch"
        + (f"; {summary['skipped_images']} unreadable images skipped" if summary["skipped_images"] else "")
    )
    table = Table()
    table.add_column("class")
    for split in summary["images"]:
        table.add_column(split, justify="right")
    for name in summary["classes"]:
        table.add_row(name, *[str(summary["per_class"][split][name]) for split in summary["images"]])
    table.add_row("total", *[str(n) for n in summary["images"].values()])
    console.print(table)


def _register_bench() -> None:
    try:
        from medlite.bench.cli import bench
    except ImportError:  # pragma: no cover - bench is part of the package; guard for partial installs
        return
    app.command("bench", help="Benchmark every variant of a run directory, or one .onnx file.")(bench)


_register_bench()


def main() -> None:
    try:
        app(standalone_mode=False)
    except UsageError as err:
        if _debug["on"]:
            raise
        print(f"medlite: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except typer.Exit as exit_:
        if exit_.exit_code == 130 and isinstance(exit_.__cause__, KeyboardInterrupt):
            print("medlite: interrupted", file=sys.stderr)
        sys.exit(exit_.exit_code)
    except typer.Abort as err:
        # Typer turns an EOFError raised anywhere inside a command into Abort: that is a fault
        # (e.g. a file that ended early), not the user pressing Ctrl-D at a prompt.
        if isinstance(err.__cause__, EOFError) and not _debug["on"]:
            print(f"medlite: unexpected error: EOFError: {err.__cause__} (rerun with --debug for the traceback)", file=sys.stderr)
            sys.exit(1)
        if _debug["on"]:
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
        if _debug["on"]:
            raise
        print(f"medlite: unexpected error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
