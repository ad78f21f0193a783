"""GPU check: mixed-precision and DDP training of the default recipe's student, and the default
recipe's wall time, on one GPU. Prints one JSON document (also written to $OUT/gpu_check.json
when $OUT is set). Needs no network: the data root must hold breastmnist.npz.

    PYTHONPATH=src python benchmarks/gpu_check.py [--data-root DIR] [--epochs N] [--skip-recipe]

Every number comes from a real training run on the real data: seconds of `fit()` (Lightning,
the recipe's student), its best validation AUC, and the test AUC of the trained model.

`peak_gpu_mb` is each configuration's own peak: the CUDA caching allocator's peak counter is reset
(`torch.cuda.reset_peak_memory_stats`) and its cache emptied (`torch.cuda.empty_cache`) before
every configuration. Without the reset the counter is the peak since the process started, so every
configuration reported the first one's (`benchmarks/results/gpu_check_h200.json`, made before the
reset, shows 246.8 MB everywhere: only its fp32 figure is that configuration's own; the others are
upper bounds). It counts this process's allocations only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def data_root(arg: str | None, tool: str = "gpu_check") -> Path:
    """The folder holding breastmnist.npz: --data-root, $MEDLITE_DATA_ROOT, or shared/ beside the repo
    (also the GPU DDP check's, `tool` names the script in the message)."""
    for candidate in (arg, os.environ.get("MEDLITE_DATA_ROOT"), REPO / "shared" / "data" / "medmnist",
                      REPO.parent / "shared" / "data" / "medmnist"):
        if candidate and (Path(candidate) / "breastmnist.npz").is_file():
            return Path(candidate)
    sys.exit(f"{tool}: breastmnist.npz not found; pass --data-root DIR (or set MEDLITE_DATA_ROOT)")


def _test_auc(model, dataset) -> float:
    import numpy as np
    import torch

    from medlite.evaluate.metrics import auc, softmax

    test = dataset.splits["test"]
    x = (torch.from_numpy(test.images.transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    with torch.no_grad():
        logits = model.cpu().eval()(x).numpy().astype(np.float64)
    return float(auc(softmax(logits), test.labels))


def train_student(dataset, recipe, trainer_overrides: list[str], epochs: int | None) -> dict:
    import torch

    from medlite.models import create
    from medlite.recipe import load_recipe
    from medlite.train import fit

    r = load_recipe("breastmnist", trainer_overrides + ([f"student.epochs={epochs}"] if epochs else []))
    torch.manual_seed(r.seed)
    model = create(r.student.arch, dataset.num_classes, dataset.channels, dataset.image_size)
    # This configuration's own peak: free what the previous one left (its model and optimizer state
    # are garbage once train_student returned) and restart the peak counter from what is held now.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as logs:
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fit(model, dataset, r.student, data_cfg=r.data, seed=r.seed, log_dir=Path(logs), device="cuda",
                     progress=False, trainer_cfg=r.trainer)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"trainer": r.trainer.model_dump(), "epochs": r.student.epochs, "seconds": round(seconds, 2),
            "mean_epoch_s": result.to_dict()["mean_epoch_s"], "best_epoch": result.best_epoch,
            "best_val_auc": result.best_val_auc, "test_auc": _test_auc(model, dataset),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    parser.add_argument("--skip-recipe", action="store_true", help="skip the full default recipe run")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU visible")
    from medlite.data import load_dataset
    from medlite.recipe import load_recipe

    root = data_root(args.data_root)
    recipe = load_recipe("breastmnist")
    dataset = load_dataset(recipe.data, root, recipe.seed)
    out: dict = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
        "bf16_supported": torch.cuda.is_bf16_supported(), "data_root": str(root),
        "student": recipe.student.arch, "students": {},
    }
    cases = {
        "fp32": ["trainer.precision=32-true"],
        "bf16-mixed": ["trainer.precision=bf16-mixed"],
        "16-mixed": ["trainer.precision=16-mixed"],
        "ddp_1gpu_auto_precision": ["trainer.strategy=ddp", "trainer.devices=1"],
    }
    for name, overrides in cases.items():
        try:
            out["students"][name] = train_student(dataset, recipe, overrides, args.epochs)
        except Exception as err:  # noqa: BLE001 - report every case, do not stop at the first failure
            out["students"][name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-1500:]}
        print(f"gpu_check: {name}: {json.dumps(out['students'][name])[:300]}", file=sys.stderr, flush=True)

    if not args.skip_recipe:
        from medlite.pipeline import run_pipeline

        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            try:
                results = run_pipeline(recipe, Path(run_dir), root, say=lambda m: print(m, file=sys.stderr, flush=True),
                                       progress=False)
                out["default_recipe"] = {
                    "wall_seconds": round(time.perf_counter() - start, 1), "timings": results["timings"],
                    "variants": {v["name"]: {"auc": v["metrics"].get("auc"), "file_bytes": v.get("file_bytes")}
                                 for v in results["variants"]},
                }
            except Exception as err:  # noqa: BLE001
                out["default_recipe"] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-1500:]}

    text = json.dumps(out, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
