"""`medlite run`, `medlite recipes`, `medlite data`: carry out a recipe, list the built-in ones, show its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.cli.common import DataRootOpt, DebugOpt, RecipeArg, SetOpt, data_root as resolve_data_root, state


def run(
    ctx: typer.Context,
    recipe: RecipeArg = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="run directory (default: runs/<recipe name>[-<data id>])")] = None,
    data_root: DataRootOpt = None,
    set_: SetOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="start over instead of resuming")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the stages and variants the recipe would make, and which would be reused; run nothing")] = False,
    debug: DebugOpt = False,
) -> None:
    """Carry out a recipe: train, distil, compress, export, evaluate, benchmark, report."""
    # local: the recipe schema (pydantic) and the pipeline (torch) are for running, not for --help.
    from medlite.recipe import default_run_dir, load_recipe

    parsed = load_recipe(recipe, set_ or [])
    default_out = out is None
    out = out or default_run_dir(parsed)
    if dry_run:
        # local: the pipeline module imports torch.
        from medlite.pipeline import dry_run as plan

        plan(parsed, out, resolve_data_root(data_root), say=typer.echo)
        return
    console = state(ctx).console
    console.print(f"medlite run {parsed.name} -> {out}")
    # local: the pipeline module imports torch; the report module jinja2 and matplotlib.
    from medlite.pipeline import run_pipeline
    from medlite.report import print_table

    results = run_pipeline(parsed, out, resolve_data_root(data_root), fresh=fresh, say=console.print, progress=None,
                           default_out=default_out)
    print_table(results, console)
    cached = len(results["cached_stages"])
    console.print(
        f"done in {results['timings']['total']:.1f}s"
        + (f" ({cached} stages unchanged, reused)" if cached else "")
        + f"; results: {out / 'results.json'}, report: {out / 'report.html'}"
    )


def recipes() -> None:
    """List the built-in recipes."""
    # local: medlite.recipe imports pydantic.
    from medlite.recipe import DEFAULT_RECIPE, builtin_recipes, describe_builtin

    for name, path in sorted(builtin_recipes().items()):
        marker = " (default)" if name == DEFAULT_RECIPE else ""
        typer.echo(f"{name:<16} {describe_builtin(path)}{marker}")


def data(ctx: typer.Context, recipe: RecipeArg = None, data_root: DataRootOpt = None, set_: SetOpt = None,
         debug: DebugOpt = False) -> None:
    """Print the dataset summary: source, classes, images per split and class, size and channels."""
    # local: rich, the data loaders (numpy, PIL) and the recipe schema (pydantic) are not for --help.
    from rich.table import Table

    from medlite.data import load_dataset
    from medlite.recipe import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    summary = load_dataset(parsed.data, resolve_data_root(data_root), parsed.seed).summary()
    console = state(ctx).console
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
