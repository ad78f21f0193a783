"""What a distillation epoch costs next to a scratch epoch (target: KD and DKD at most 1.5x), and how
long one training epoch of each architecture takes (to size the built-in recipes).

    python benchmarks/distill_epoch_cost.py --data-root DIR [--flag breastmnist] [--epochs 4] [--threads 2]
    python benchmarks/distill_epoch_cost.py --data-root DIR --archs small_resnet18 medlite_dsconv ...
    python benchmarks/distill_epoch_cost.py --data-root DIR --views [--teacher medlite_dsconv_wide]

Views mode (issue 21): the epoch cost of function matching (the teacher live on the student's very
view, mixup on every batch) against a scratch epoch with live augmentation (the fair baseline) and
against KD from the bank, and of a cross-resolution student (half the side) on the live teacher.

Method mode: trains one teacher briefly, then the student with each method for --epochs epochs through
`medlite.train.fit` (the pipeline's own training path: teacher bank for logit methods, live teacher for
feature methods), and reports the mean epoch time without the first epoch (warm-up), the one-off
teacher-bank time, and the ratio to the scratch epoch on the same fixed views. Prints a markdown table;
`--json FILE` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    from medlite.data import load_dataset
    from medlite.recipe import Recipe

    recipe = Recipe.model_validate({"data": {"flag": args.flag, "balance": "class_weights",
                                             **({"limit": args.limit} if args.limit else {})}})
    return recipe, load_dataset(recipe.data, Path(args.data_root), 0)


def _mean_epoch(result) -> float:
    seconds = result.epoch_seconds[1:] or result.epoch_seconds  # the first epoch pays one-off costs
    return sum(seconds) / len(seconds)


def _min_epoch(result) -> float:
    """The fastest epoch: the estimate least disturbed by other processes on a shared machine."""
    return min(result.epoch_seconds[1:] or result.epoch_seconds)


def method_costs(args) -> list[dict]:
    import torch

    from medlite.distill.config import CONFIGS
    from medlite.models import create
    from medlite.train import fit

    recipe, ds = _setup(args)
    log = Path(tempfile.mkdtemp(prefix="medlite-cost-"))
    make = lambda arch: (torch.manual_seed(0), create(arch, ds.num_classes, ds.channels, ds.image_size))[1]  # noqa: E731
    teacher = make(args.teacher)
    fit(teacher, ds, recipe.teacher.model_copy(update={"arch": args.teacher, "epochs": 1}), data_cfg=recipe.data,
        seed=0, log_dir=log / "teacher")
    cfg = recipe.student.model_copy(update={"arch": args.student, "epochs": args.epochs})
    rows = []
    for name in ["scratch"] + args.methods:
        distill = None if name == "scratch" else CONFIGS[name]()
        arch = distill.student_arch(args.student) if distill else args.student
        start = time.perf_counter()
        result = fit(make(arch), ds, cfg.model_copy(update={"arch": arch}), data_cfg=recipe.data, seed=0,
                     log_dir=log / name, teacher=None if distill is None else teacher, distill=distill,
                     fixed_views=distill is None)
        rows.append({"method": name, "epoch_s": _mean_epoch(result), "min_epoch_s": _min_epoch(result),
                     "bank_s": result.teacher_cache_seconds,
                     "total_s": time.perf_counter() - start,
                     "teacher": "none (same fixed views)" if distill is None else "live" if type(distill).uses_teacher_features else "bank"})
    base = rows[0]["epoch_s"]
    for row in rows:
        row["ratio"] = row["epoch_s"] / base
        row["min_ratio"] = row["min_epoch_s"] / rows[0]["min_epoch_s"]
        # The bank is built once per run: spread over the epochs it serves, it is part of the epoch cost.
        row["ratio_with_bank"] = (row["epoch_s"] + row["bank_s"] / args.epochs) / (base + rows[0]["bank_s"] / args.epochs)
    return rows


def views_costs(args) -> list[dict]:
    import torch

    from medlite.distill.config import KDConfig
    from medlite.models import create
    from medlite.train import fit

    recipe, ds = _setup(args)
    log = Path(tempfile.mkdtemp(prefix="medlite-cost-"))
    make = lambda arch, size=ds.image_size: (torch.manual_seed(0), create(arch, ds.num_classes, ds.channels, size))[1]  # noqa: E731
    teacher = make(args.teacher)
    fit(teacher, ds, recipe.teacher.model_copy(update={"arch": args.teacher, "epochs": 1}), data_cfg=recipe.data,
        seed=0, log_dir=log / "teacher")
    cfg = recipe.student.model_copy(update={"arch": args.student, "epochs": args.epochs})
    half = ds.image_size // 2
    modes = [  # name, teacher?, views, mixup, student input size
        ("scratch (live augmentation)", False, "live", 0.0, ds.image_size),
        ("scratch + mixup 0.2", False, "live", 0.2, ds.image_size),
        ("kd, bank", True, "bank", 0.0, ds.image_size),
        ("kd, live teacher", True, "live", 0.0, ds.image_size),
        ("kd, function matching (live + mixup 0.2)", True, "live", 0.2, ds.image_size),
        (f"kd, function matching, student at {half} px", True, "live", 0.2, half),
        (f"scratch + mixup 0.2, student at {half} px", False, "live", 0.2, half),
    ]
    rows = []
    for name, with_teacher, views, alpha, size in modes:
        distill = KDConfig(views=views, mixup=alpha) if with_teacher else None
        start = time.perf_counter()
        result = fit(make(args.student, size), ds, cfg, data_cfg=recipe.data, seed=0, log_dir=log / name.replace(" ", "_"),
                     teacher=teacher if with_teacher else None, distill=distill, mixup=None if with_teacher else alpha,
                     input_size=size, teacher_sizes=[ds.image_size] if with_teacher else None)
        rows.append({"mode": name, "epoch_s": _mean_epoch(result), "min_epoch_s": _min_epoch(result),
                     "bank_s": result.teacher_cache_seconds, "total_s": time.perf_counter() - start})
    base = rows[0]
    for row in rows:
        row["ratio"] = row["epoch_s"] / base["epoch_s"]
        row["min_ratio"] = row["min_epoch_s"] / base["min_epoch_s"]
        row["ratio_with_bank"] = (row["epoch_s"] + row["bank_s"] / args.epochs) / base["epoch_s"]
    return rows


def arch_costs(args) -> list[dict]:
    import torch

    from medlite.models import count_params, create
    from medlite.train import fit

    recipe, ds = _setup(args)
    log = Path(tempfile.mkdtemp(prefix="medlite-cost-"))
    rows = []
    for arch in args.archs:
        torch.manual_seed(0)
        model = create(arch, ds.num_classes, ds.channels, ds.image_size)
        result = fit(model, ds, recipe.student.model_copy(update={"arch": arch, "epochs": args.epochs}),
                     data_cfg=recipe.data, seed=0, log_dir=log / arch.replace("/", "_"))
        rows.append({"arch": arch, "params": count_params(model), "epoch_s": _mean_epoch(result)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("MEDLITE_DATA_ROOT"), required=not os.environ.get("MEDLITE_DATA_ROOT"))
    parser.add_argument("--flag", default="breastmnist")
    parser.add_argument("--limit", type=int, default=None, help="images per split (quick checks)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", default="small_pooled_resnet18")
    parser.add_argument("--student", default="medlite_dsconv")
    parser.add_argument("--methods", nargs="+", default=["kd", "dkd", "dist", "fitnet", "at", "multistage"])
    parser.add_argument("--archs", nargs="+", help="time one training epoch of each architecture instead")
    parser.add_argument("--views", action="store_true", help="time function matching and cross-resolution students instead")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    if args.views:
        rows = views_costs(args)
        print(f"{args.student} with teacher {args.teacher} on {args.flag}, {args.epochs} epochs, {args.threads} threads, "
              f"load average {load:.1f} at start\n")
        print("| mode | mean epoch s | x scratch | fastest epoch s | x scratch | bank s (once) | x scratch incl. bank |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['mode']} | {r['epoch_s']:.2f} | {r['ratio']:.2f} | {r['min_epoch_s']:.2f} | {r['min_ratio']:.2f} | "
                  f"{r['bank_s']:.1f} | {r['ratio_with_bank']:.2f} |")
    elif args.archs:
        rows = arch_costs(args)
        print(f"| arch | params | epoch s ({args.flag}, {args.threads} threads, load {load:.1f}) |\n|---|---:|---:|")
        for r in rows:
            print(f"| {r['arch']} | {r['params']:,} | {r['epoch_s']:.2f} |")
    else:
        rows = method_costs(args)
        print(f"{args.student} distilled from {args.teacher} on {args.flag}, {args.epochs} epochs, "
              f"{args.threads} threads, load average {load:.1f} at start\n")
        print("| method | teacher | mean epoch s | x scratch | fastest epoch s | x scratch | bank s (once) | mean x scratch incl. bank |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['method']} | {r['teacher']} | {r['epoch_s']:.2f} | {r['ratio']:.2f} | {r['min_epoch_s']:.2f} | "
                  f"{r['min_ratio']:.2f} | {r['bank_s']:.1f} | {r['ratio_with_bank']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
