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
    # Under torchrun or srun every rank runs this command: rank 0 runs the pipeline, the others train
    # with it (medlite.train.launched) and write nothing.
    from medlite.train import launched
    from medlite.train.device import resolve_device

    def lead(world) -> None:
        if world is not None:
            state(ctx).console.print(f"ddp: {world.size} processes on {world.nodes} node(s), started by {world.launcher}: "
                                     f"rank 0 runs the pipeline and writes the run; every rank trains")
        _run(ctx, parsed, out, default_out, data_root, fresh)

    launched.on_every_rank(resolve_device(parsed.device), lead)


def _run(ctx: typer.Context, parsed, out: Path, default_out: bool, data_root: Optional[Path], fresh: bool) -> None:
    console = state(ctx).console
    console.print(f"medlite run {parsed.name} -> {out}")
    # local: the pipeline module imports torch; the report module jinja2 and matplotlib.
    from medlite.pipeline import run_pipeline
    from medlite.report import print_table

    from medlite.runstate import Before, discard_skeleton

    before = Before.of(out)
    try:
        results = run_pipeline(parsed, out, resolve_data_root(data_root), fresh=fresh, say=console.print,
                               progress=None, default_out=default_out)
    except BaseException:
        # A run that failed before computing anything (missing data, a recipe its data refutes)
        # leaves no skeleton folder behind; anything computed stays for the rerun to resume.
        discard_skeleton(before)
        raise
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


def data(
    ctx: typer.Context,
    recipe: RecipeArg = None,
    data_root: DataRootOpt = None,
    set_: SetOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="check the data: MD5, unreadable files, shapes, ranges, classes, balance, group leakage, duplicates; exit 2 on a fault")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print JSON for machines instead of tables")] = False,
    max_distance: Annotated[int, typer.Option("--max-distance", min=0, max=64, help="--verify: perceptual-hash bits within which two images are near duplicates")] = 4,
    debug: DebugOpt = False,
) -> None:
    """Print the dataset summary: source, classes, images per split and class, size and channels (--verify: check it)."""
    # local: rich, the data loaders (numpy, PIL) and the recipe schema (pydantic) are not for --help.
    import json

    from medlite.recipe import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    console = state(ctx).console
    if verify:
        from medlite.data.verify import verify_data

        report = verify_data(parsed.data, resolve_data_root(data_root), parsed.seed, max_distance=max_distance)
        if json_:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            _print_verify(report, console)
        if report.faults:
            from medlite.errors import DataError

            # An error, not typer.Exit: main() runs the app with standalone_mode=False, where an
            # Exit's code is returned and lost; a DataError is the one line and exit code 2.
            first = report.faults[0]
            more = f" (and {len(report.faults) - 1} more)" if len(report.faults) > 1 else ""
            raise DataError(f"data --verify: {len(report.faults)} faults; first [{first.check}]: {first.message}{more}")
        return
    from medlite.data import load_dataset

    # multilabel=True: a summary of multi-label data is fine even where the pipeline cannot train on it yet
    summary = load_dataset(parsed.data, resolve_data_root(data_root), parsed.seed, multilabel=True).summary()
    if json_:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary, console)


def _print_summary(summary: dict, console) -> None:
    from rich.table import Table

    from medlite.task import task_of

    console.print(f"{summary['name']} ({summary['source']}): {summary['origin']}")
    console.print(
        f"{summary['num_classes']} {'labels (multi-label)' if task_of(summary['task']).multilabel else 'classes'}; split: {summary['split']}; native {summary['native_size']} px x "
        f"{summary['native_channels']} ch -> model input {summary['image_size']} px x {summary['channels']} ch"
        + (f"; {summary['skipped_images']} unreadable images skipped" if summary["skipped_images"] else "")
    )
    files = summary.get("files") or {}
    if any(files.values()):
        console.print(f"files: {files.get('hidden_skipped', 0)} hidden skipped (._*, .thumbs/ ...), "
                      f"{files.get('symlinked', 0)} symlinked, {files.get('nested', 0)} in sub-folders", markup=False)
    for item in (summary.get("skipped") or [])[:20]:
        console.print(f"skipped: {item['file']}: {item['reason']}", markup=False)
    if len(summary.get("skipped") or []) > 20:
        console.print(f"(first 20 of {len(summary['skipped'])} skipped; all in --json)")
    table = Table()
    table.add_column("class")
    for split in summary["images"]:
        table.add_column(split, justify="right")
    for name in summary["classes"]:
        table.add_row(name, *[str(summary["per_class"][split][name]) for split in summary["images"]])
    table.add_row("total", *[str(n) for n in summary["images"].values()])
    console.print(table)


def _print_verify(report, console) -> None:
    """The verify report for people: the summary table, the checks, then every fault and warning."""
    from rich.markup import escape
    from rich.table import Table

    if report.summary is not None:
        _print_summary(report.summary, console)
        checks = Table(title="checks")
        for column in ("split", "images", "pixels min..max (mean)", "flat", "groups"):
            checks.add_column(column, justify="left" if column == "split" else "right")
        per_split_groups = (report.groups or {}).get("per_split", {})
        for split, shape in report.shapes.items():
            values = report.values[split]
            pixels = "-" if values["min"] is None else f"{values['min']}..{values['max']} ({values['mean']:.1f})"
            checks.add_row(split, "x".join(map(str, shape["images"])), pixels, str(values["flat_images"]),
                           str(per_split_groups.get(split, "-")))
        console.print(checks)
        if report.duplicates is not None:
            dup = Table(title=f"duplicates (near: within {report.duplicates.max_distance} bits)")
            for column in ("splits", "exact", "near", "images with a copy", "label conflicts"):
                dup.add_column(column, justify="left" if column == "splits" else "right")
            for key, counts in report.duplicates.counts.items():
                dup.add_row(key, str(counts.exact), str(counts.near), str(counts.images_b_with_copy), str(counts.label_conflicts))
            console.print(dup)
    if report.md5:
        console.print(f"MD5 {report.md5['md5']} ({'official' if report.md5['ok'] else 'NOT the official ' + str(report.md5['expected'])})")
    for finding in report.findings:
        console.print(escape(f"{finding.level.upper()} [{finding.check}] {finding.message}"))
    verdict = "verify: ok" if report.ok else f"verify: {len(report.faults)} faults"
    console.print(verdict + (f", {len(report.warnings)} warnings" if report.warnings else ""))
