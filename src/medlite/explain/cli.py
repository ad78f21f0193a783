"""`medlite explain RUN_DIR [--variants ...] [--images DIR]`: explain the variants of a finished run.

Without `--images`: the recipe's explain stage on the run's own test images (cached like every
stage), then results.json and report.html are rewritten. With `--images DIR`: maps for your own
images (no labels: every map explains the class the first listed variant predicts), written to
`figures/explain_images_<method>.png|svg` and `explain/images.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.errors import UsageError
from medlite.runstate import RESOLVED_RECIPE, read_json


def _split_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def load_run(run_dir: Path, data_root: Path, overrides: list[str], say):
    """(ctx, results) of a finished run directory: its resolved recipe, its data, its variants."""
    from medlite.data import load_dataset
    from medlite.recipe import load_recipe
    from medlite.runstate import RunDir
    from medlite.context import Context
    from medlite.variant import Variant

    results = read_json(run_dir / "results.json",
                        missing=f"not found: not a medlite run directory; run `medlite run --out {run_dir}` first")
    recipe = load_recipe(str(run_dir / RESOLVED_RECIPE), overrides)
    ctx = Context(recipe, RunDir(run_dir), data_root, say, progress=None)
    ctx.dataset = load_dataset(recipe.data, data_root, recipe.seed)
    ctx.variants = {v["name"]: Variant.from_dict(v) for v in results["variants"]}
    return ctx, results


def explain_images(ctx, folder: Path, names: list[str]) -> dict:
    """Maps of every method for the images in `folder`, per variant; the gallery figures; a JSON summary."""
    import numpy as np

    from medlite.data.preprocess import IMAGE_SUFFIXES, load_image, normalize
    from medlite.explain.stage import explain_variant
    from medlite.report import figures
    from medlite.runstate import write_json

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise UsageError(f"--images {folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    spec = ctx.dataset.preprocess
    pixels = []
    for path in files:
        try:
            pixels.append(load_image(path, spec.channels, spec.image_size))
        except (OSError, ValueError, SyntaxError) as err:
            raise UsageError(f"{path}: not a readable image ({type(err).__name__})") from None
    raw = np.stack(pixels)
    images = normalize(raw, spec)
    from medlite.evaluate import predict_artifact

    reference = ctx.variants[names[0]]
    targets = predict_artifact(ctx.run.root / reference.file, raw, spec).argmax(1).astype(int)
    classes = list(spec.class_names)
    summary: dict = {"images": [str(p) for p in files], "target_rule": f"the class {names[0]} predicts",
                     "targets": [classes[t] for t in targets], "variants": {}}
    columns: dict[str, list] = {}
    for name in names:
        facts, maps = explain_variant(ctx, ctx.variants[name], images, targets, ctx.recipe.explain)
        summary["variants"][name] = facts
        for method, m in maps.items():
            columns.setdefault(method, []).append((name, m, np.array(facts["probabilities"])))
    summary["figures"] = {}
    for method, cols in columns.items():
        fig = figures.explanation_gallery(method, raw, [p.name for p in files], cols, classes, targets, ctx.run.figures,
                                          stem=f"explain_images_{figures.safe_stem(method)}",
                                          title=f"{method}: maps for the class {names[0]} predicts (green: the variant agrees)")
        summary["figures"][method] = fig["png"]
    write_json(ctx.run.root / "explain" / "images.json", summary)
    return summary


def explain(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `medlite run`")],
    variants: Annotated[Optional[list[str]], typer.Option("--variants", help="variants to explain (repeat or comma-separate); default: the recipe's explain.variants, else all")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="explain the images in this folder instead of the run's test images")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="comma-separated methods, e.g. gradcam,occlusion,lime (default: the recipe's)")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="dataset folder (default: $MEDLITE_DATA_ROOT, else ~/.cache/medlite)")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Explain a run's variants: maps, faithfulness, agreement; rewrites results.json and report.html."""
    from medlite import cli as front
    from medlite.data.medmnist import default_data_root

    front._debug["on"] = debug
    console = front._console()
    overrides = [f"explain.methods=[{methods}]"] if methods else []
    ctx, results = load_run(run_dir, data_root.expanduser() if data_root else default_data_root(), overrides, console.print)
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
    from medlite.explain.stage import stage_explain
    from medlite.report import write_report
    from medlite.runstate import write_json

    stage_explain(ctx, names)
    for v in results["variants"]:
        if v["name"] in names:
            v["explain"] = ctx.variants[v["name"]].explain
    results["timings"]["explain"] = ctx.ledger.timings.get("explain", 0.0)
    write_json(run_dir / "results.json", results)
    write_report(run_dir, results, ctx.dataset)
    console.print(f"explained {len(names)} variants in {ctx.ledger.timings.get('explain', 0):.1f}s; report: {run_dir / 'report.html'}")
