"""How long the explain stage takes per variant, on the default recipe's architectures.

    PYTHONPATH=src python benchmarks/explain_speed.py [RUN_DIR]

With RUN_DIR (a finished run): times `explain_variant` on every variant of that run with the
run's own explain settings. Without: builds the default teacher and student with seeded random
weights (the cost of a forward pass does not depend on the weights), exports them, quantizes them
(int8 static and dynamic), and times each. Prints wall and process CPU seconds per variant: on a
shared machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _time(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def from_run(run_dir: Path) -> None:
    from medlite.explain.rundir import load_run
    from medlite.explain.stage import explain_variant, select_images
    from medlite.data.preprocess import normalize

    ctx, _ = load_run(run_dir, Path(__import__("os").environ.get("MEDLITE_DATA_ROOT", ".")), [], print)
    cfg = ctx.recipe.explain
    split = ctx.dataset.splits["test"]
    idx = select_images(split.labels, np.zeros(len(split), bool), cfg.images_per_class, ctx.recipe.seed)
    images, targets = normalize(split.images[idx], ctx.dataset.preprocess), split.labels[idx].astype(int)
    total_wall = total_cpu = 0.0
    for name, variant in ctx.variants.items():
        _, wall, cpu = _time(lambda: explain_variant(ctx, variant, images, targets, cfg))
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(f"{name:32s} wall {wall:6.2f}s  cpu {cpu:6.2f}s")
    print(f"{'total':32s} wall {total_wall:6.2f}s  cpu {total_cpu:6.2f}s  ({len(images)} images, {', '.join(cfg.methods)})")


def synthetic() -> None:
    import torch

    from medlite.compress.quantize import quantize_dynamic, quantize_static
    from medlite.data.preprocess import PreprocessSpec
    from medlite.explain.config import ExplainConfig
    from medlite.explain.methods import Subject
    from medlite.explain.stage import onnx_predictor
    from medlite.explain import get_explainer
    from medlite.explain.scores import deletion_insertion, random_maps
    from medlite.export.onnx import export_onnx
    from medlite.models import create
    from medlite.recipe import load_recipe

    recipe = load_recipe("breastmnist")
    cfg: ExplainConfig = recipe.explain
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("malignant", "normal, benign"))
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (2 * cfg.images_per_class, 1, 28, 28)).astype(np.float32)
    targets = np.arange(len(images)) % 2
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for role, arch in (("teacher", recipe.teacher.arch), ("student", recipe.student.arch)):
        torch.manual_seed(0)
        model = create(arch, 2, 1, 28).eval()
        fp32 = tmp / f"{role}.onnx"
        export_onnx(model, spec, fp32)
        quantize_static(fp32, tmp / f"{role}_int8_static.onnx", images.repeat(8, 0))
        quantize_dynamic(fp32, tmp / f"{role}_int8_dynamic.onnx")
        for name, path, module in ((role, fp32, model), (f"{role}_int8_static", tmp / f"{role}_int8_static.onnx", None),
                                   (f"{role}_int8_dynamic", tmp / f"{role}_int8_dynamic.onnx", None)):
            predict = onnx_predictor(path)
            subject = Subject(name, predict, module=module)

            def work():
                for method in cfg.methods:
                    e = get_explainer(method, cfg)
                    if e.not_applicable(subject) is None:
                        deletion_insertion(predict, images, e.explain(subject, images, targets), targets, cfg.steps)
                deletion_insertion(predict, images, random_maps((len(images), 28, 28), 0), targets, cfg.steps)

            work() if not rows else None  # warm-up imports once
            _, wall, cpu = _time(work)
            rows.append((name, wall, cpu))
            print(f"{name:24s} wall {wall:6.2f}s  cpu {cpu:6.2f}s")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        from_run(Path(sys.argv[1]))
    else:
        synthetic()
