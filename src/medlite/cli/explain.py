"""`medlite explain RUN_DIR [--variants ...] [--images DIR]`: explain the variants of a finished run.

Without `--images`: the recipe's explain stage on the run's own test images (cached like every
stage), then results.json and report.html are rewritten. With `--images DIR`: maps for your own
images (no labels: every map explains the class the first listed variant predicts), written to
`figures/explain_images_<method>.png|svg` and `explain/images.json`.

Both write into the run directory, so the command holds the run's lock throughout: a live
`medlite run` (or another `medlite explain`) on the same directory is refused, naming its pid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.cli.common import DebugOpt, data_root as resolve_data_root, state
from medlite.errors import UsageError
from medlite.runstate import RunDir, read_json, write_json


def _split_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def explain(
    cmd: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `medlite run`")],
    variants: Annotated[Optional[list[str]], typer.Option("--variants", help="variants to explain (repeat or comma-separate); default: the recipe's explain.variants, else all")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="explain the images in this folder instead of the run's test images")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="comma-separated methods, e.g. gradcam,occlusion,lime (default: the recipe's)")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="dataset folder (default: $MEDLITE_DATA_ROOT, else ~/.cache/medlite)")] = None,
    debug: DebugOpt = False,
) -> None:
    """Explain a run's variants: maps, faithfulness, agreement; rewrites results.json and report.html."""
    # local: loading a run imports the data code and the recipe schema (numpy, pydantic), not for --help.
    from medlite.explain.rundir import explain_images, load_run

    console = state(cmd).console
    overrides = [f"explain.methods=[{methods}]"] if methods else []
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        # Says why (not a run directory) before a lock file is made in a folder that is not one.
        read_json(results_path, missing=f"not found: not a medlite run directory; run `medlite run --out {run_dir}` first")
    with RunDir(run_dir) as run:
        run.lock()  # a live run holding it -> UsageError naming its pid; results.json is read under the lock
        ctx, results = load_run(run_dir, resolve_data_root(data_root), overrides, console.print, run=run)
        names = _split_names(variants) or ctx.recipe.explain.variants or list(ctx.variants)
        unknown = [n for n in names if n not in ctx.variants]
        if unknown:
            raise UsageError(f"--variants: no variant {unknown[0]!r} in {run_dir} (choose from {', '.join(ctx.variants)})")
        if images is not None:
            summary = explain_images(ctx, images, names)
            for method, path in summary["figures"].items():
                console.print(f"{method}: {run_dir / path}")
            console.print(f"details: {run_dir / 'explain' / 'images.json'}")
            return
        # local: the explain stage imports torch and the explainers; the report jinja2 and matplotlib.
        from medlite.explain.stage import stage_explain
        from medlite.report import write_report

        stage_explain(ctx, names)
        for v in results["variants"]:
            if v["name"] in names:
                v["explain"] = ctx.variants[v["name"]].explain
        results["timings"]["explain"] = ctx.ledger.timings.get("explain", 0.0)
        write_json(run_dir / "results.json", results)
        write_report(run_dir, results, ctx.dataset)
    console.print(f"explained {len(names)} variants in {ctx.ledger.timings.get('explain', 0):.1f}s; report: {run_dir / 'report.html'}")
