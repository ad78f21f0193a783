"""GPU DDP check (prepared, not yet run: no machine with several GPUs was lent when it was written).

On one node with N >= 1 GPUs: the default recipe's teacher trained (a) on one GPU and (b) with
`trainer.strategy: ddp, trainer.devices: N` (medlite spawns the ranks: `ddp_spawn`, NCCL), through
`medlite.train.fit`; then (c) a whole tiny pipeline run with DDP (teacher, students, distillation,
QAT and pruning fine-tunes), every variant measured, and (d) the refusals: more GPUs than the
machine has, and num_nodes 2 without a launcher (torchrun or srun: README, "Several nodes"). Prints one JSON document (also $OUT/gpu_ddp_check.json when $OUT is
set). Needs no network: the data root must hold breastmnist.npz.

    PYTHONPATH=src python benchmarks/gpu_ddp_check.py [--data-root DIR] [--epochs 10] [--devices N]

With one GPU, (b) is a world of one (placement "ddp") and the spawn path is exercised on CPU by the
test suite only (tests/test_ddp.py, gloo). Keep it under ~5 minutes on an H100/H200: --epochs 10.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _data_root(arg: str | None) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import data_root  # the same search as the single-GPU check

    return data_root(arg, "gpu_ddp_check")


def teacher(data_root: Path, epochs: int, devices: int | None) -> dict:
    import torch

    from medlite.data import load_dataset
    from medlite.models import create
    from medlite.recipe import load_recipe
    from medlite.train import fit
    from medlite.train.device import placement

    overrides = [f"teacher.epochs={epochs}", "device=cuda"]
    if devices:
        overrides += [f"trainer.devices={devices}", "trainer.strategy=ddp"]
    recipe = load_recipe("breastmnist", overrides)
    dataset = load_dataset(recipe.data, data_root, recipe.seed)
    torch.manual_seed(recipe.seed)
    t = recipe.teacher
    model = create(t.arch, dataset.num_classes, dataset.channels, dataset.image_size)
    where = placement(recipe.trainer, "cuda", recipe.data.balance)
    with tempfile.TemporaryDirectory() as logs:
        start = time.perf_counter()
        result = fit(model, dataset, t, data_cfg=recipe.data, seed=recipe.seed, log_dir=Path(logs), device="cuda",
                     progress=False, trainer_cfg=recipe.trainer)
        wall = time.perf_counter() - start
    return {"devices": devices or 1, "strategy": where.strategy, "world": where.world, "wall_s": round(wall, 2),
            "epoch_s": result.epoch_seconds, "best_val_auc": result.best_val_auc, "best_epoch": result.best_epoch,
            "global_batch": t.batch_size, "per_rank_batch": t.batch_size // max(1, where.world)}


def pipeline(data_root: Path, devices: int) -> dict:
    import json as _json

    from medlite.pipeline import run_pipeline
    from medlite.recipe import load_recipe

    overrides = ["device=cuda", f"trainer.devices={devices}", "trainer.strategy=ddp", "data.limit=200",
                 "teacher.epochs=2", "student.epochs=2", "compress.int8_qat.epochs=1",
                 "compress.prune_unstructured.epochs=1", "compress.prune_structured.epochs=1",
                 "bench.enabled=false", "evaluate.bootstrap=0"]
    recipe = load_recipe("breastmnist", overrides)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = run_pipeline(recipe, Path(out) / "run", data_root, say=lambda _: None, progress=False)
        wall = time.perf_counter() - start
        variants = {v["name"]: (v.get("metrics") or {}).get("auc") for v in results.get("variants", [])}
        _json.dumps(variants)
    return {"devices": devices, "wall_s": round(wall, 1), "variants_test_auc": variants,
            "every_variant_measured": all(a is not None for a in variants.values())}


def refusals(devices_have: int) -> dict:
    from medlite.errors import UsageError
    from medlite.recipe import load_recipe
    from medlite.train.device import placement

    out = {}
    for key, overrides in (("too_many_gpus", [f"trainer.devices={devices_have + 1}", "trainer.strategy=ddp"]),
                           ("two_nodes", ["trainer.num_nodes=2", "trainer.strategy=ddp"])):
        try:
            placement(load_recipe("breastmnist", overrides).trainer, "cuda", "class_weights")
            out[key] = "NOT REFUSED"
        except UsageError as err:
            out[key] = str(err)
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--devices", type=int, default=None, help="GPUs for DDP (default: all visible)")
    args = parser.parse_args()
    data_root = _data_root(args.data_root)
    have = torch.cuda.device_count()
    if not have:
        sys.exit("gpu_ddp_check: no CUDA GPU visible")
    devices = args.devices or have
    doc: dict = {"gpus": [torch.cuda.get_device_name(i) for i in range(have)], "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "epochs": args.epochs}
    for key, fn in (("one_gpu", lambda: teacher(data_root, args.epochs, None)),
                    ("ddp", lambda: teacher(data_root, args.epochs, devices)),
                    ("pipeline_ddp", lambda: pipeline(data_root, devices)),
                    ("refusals", lambda: refusals(have))):
        try:
            doc[key] = fn()
        except Exception:  # noqa: BLE001 - record and go on: one failing part must not hide the others
            doc[key] = {"error": traceback.format_exc(limit=6)}
        print(json.dumps({key: doc[key]}, default=str), flush=True)
    text = json.dumps(doc, indent=1, default=str)
    print(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_ddp_check.json").write_text(text)


if __name__ == "__main__":
    main()
