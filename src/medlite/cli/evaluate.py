"""`medlite evaluate` (external validation of a deployed file on another dataset) and `medlite models`
(the variants of a run and which one `predict` would deploy).

Module-level imports stay light (typer, the standard library): the data loaders, the runtimes,
scikit-learn and matplotlib are imported when the command runs, so `medlite --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.cli.common import DataRootOpt, DebugOpt, data_root as resolve_data_root, state


def evaluate(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="a model file (.onnx, .tflite) or a run directory (its deployed file)")],
    data: Annotated[str, typer.Argument(help="a built-in recipe or recipe YAML (its data section), a MedMNIST flag, or an image folder")],
    class_map: Annotated[Optional[list[str]], typer.Option(
        "--class-map", help="SRC=DST: the data's class SRC is the model's class DST (repeatable)")] = None,
    split: Annotated[str, typer.Option("--split", help="the data's split to test: train, val, test or all")] = "test",
    out: Annotated[Optional[Path], typer.Option("--out", help="output folder (default: runs/evaluate-<model>-<data>)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the document (evaluation.json) instead of a summary")] = False,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples for the confidence intervals")] = 1000,
    data_root: DataRootOpt = None,
    threads: Annotated[int, typer.Option("--threads", help="runtime threads; 0 = all cores")] = 0,
    debug: DebugOpt = False,
) -> None:
    """Test a deployed model on another dataset: metrics with CIs, calibration, figures, predictions, a page."""
    # local: the evaluation imports numpy, the data loaders, the runtimes, scikit-learn and matplotlib.
    from medlite.evaluate.external import evaluate_external, parse_class_map, summary_lines

    doc = evaluate_external(model, data, resolve_data_root(data_root), class_map=parse_class_map(class_map),
                            split=split, out=out, bootstrap=bootstrap, threads=threads)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    console = state(ctx).console
    for line in summary_lines(doc):
        console.print(line, markup=False)


def models(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the listing as JSON")] = False,
    debug: DebugOpt = False,
) -> None:
    """List a run's variants (file, size, runtime, AUC, warnings) and which one `predict` would deploy, and why."""
    # local: the runtime registry imports numpy and Pillow; rich is for the table.
    from rich.table import Table

    from medlite.deploy.models import list_models
    from medlite.errors import UsageError
    from medlite.runtime import ArtifactError

    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a run directory")
    try:
        listing = list_models(run_dir)
    except ArtifactError as err:
        raise UsageError(str(err)) from None
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    console = state(ctx).console
    table = Table(show_edge=False)
    for col in ("", "variant", "file", "KiB", "runtime", f"{listing['evaluated_split']} AUC", "val AUC", "warnings"):
        table.add_column(col, overflow="fold")
    auc = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    for v in listing["variants"]:
        runtime = (v["runtime"] or "?") + ("" if v["runtime_installed"] is not False else " (not installed)")
        shown_auc = v["test_auc"] if listing["evaluated_split"] == "test" else v["val_auc"]
        table.add_row("*" if v["deployed"] else "", v["name"], (v["file"] or "-") + ("" if v["file_exists"] else " (missing)"),
                      "n/a" if v["file_bytes"] is None else f"{v['file_bytes'] / 1024:.0f}", runtime,
                      auc(shown_auc), auc(v["val_auc"]), "; ".join(v["warnings"]))
    console.print(table)
    deploy = listing["deploy"]
    console.print(f"predict would deploy: {deploy['variant'] or 'nothing'} ({deploy['rule']})", markup=False)
