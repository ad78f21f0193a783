"""Explaining a finished run directory: load its recipe, data and variants; explain images you give.

Used by `medlite explain` (medlite.cli.explain) and benchmarks/explain_speed.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from medlite.data import load_dataset
from medlite.data.preprocess import IMAGE_SUFFIXES, list_images, load_image
from medlite.errors import UsageError
from medlite.recipe import load_recipe
from medlite.runstate import RESOLVED_RECIPE, RunDir, read_json, write_json


def load_run(run_dir: Path, data_root: Path, overrides: list[str], say: Callable[[str], None],
             run: RunDir | None = None):
    """(ctx, results) of a finished run directory: its resolved recipe, its data, its variants.

    `run`: the RunDir of `run_dir` to work in (e.g. one whose lock the caller holds); default a new one.
    """
    # local: medlite.variant imports the model code (torch).
    from medlite.context import Context
    from medlite.variant import Variant

    results = read_json(run_dir / "results.json",
                        missing=f"not found: not a medlite run directory; run `medlite run --out {run_dir}` first")
    recipe = load_recipe(str(run_dir / RESOLVED_RECIPE), overrides)
    ctx = Context(recipe, run or RunDir(run_dir), data_root, say, progress=None)
    ctx.dataset = load_dataset(recipe.data, data_root, recipe.seed)
    ctx.variants = {v["name"]: Variant.from_dict(v) for v in results["variants"]}
    return ctx, results


def explain_images(ctx, folder: Path, names: list[str]) -> dict:
    """Maps of every method for the images in `folder`, per variant; the gallery figures; a JSON summary."""
    # local: the explain stage and the figures import torch and matplotlib.
    from medlite.evaluate import predict_artifact
    from medlite.data.preprocess import resize_batch
    from medlite.explain.stage import explain_pixels
    from medlite.report import figures

    files = list_images(folder).files if folder.is_dir() else []  # hidden entries (._*, .thumbs/) left out
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

    reference = ctx.variants[names[0]]
    reference_spec = ctx.data_for(reference).preprocess  # its own input size
    targets = predict_artifact(ctx.run.root / reference.file, resize_batch(raw, reference_spec.image_size),
                               reference_spec).argmax(1).astype(int)
    classes = list(spec.class_names)
    summary: dict = {"images": [str(p) for p in files], "target_rule": f"the class {names[0]} predicts",
                     "targets": [classes[t] for t in targets], "variants": {}}
    columns: dict[str, list] = {}
    for name in names:
        facts, maps = explain_pixels(ctx, ctx.variants[name], raw, targets, ctx.recipe.explain)
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
