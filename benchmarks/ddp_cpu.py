"""DDP on CPU: the default recipe's teacher trained in 1 process and in 2 (`trainer.strategy: ddp`,
`trainer.devices: 2`: forked ranks, gloo), on the same data: wall time and best validation AUC.

    python benchmarks/ddp_cpu.py --data-root DIR [--epochs 8] [--out benchmarks/results/ddp_cpu_2cores.md]

Both runs go through `medlite.train.fit` (the pipeline's training path) with the recipe's teacher
settings (arch, lr, batch size 64, light augmentation, class weights); only `--epochs` is reduced
from the recipe's 40. Under DDP each rank sees half of every epoch with 32 images per step (the
global batch stays 64) and validation is gathered over the whole split. The single process uses
every core as torch threads; each DDP rank gets its share (cores // 2): the same cores either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def one(mode: str, args, cores: int) -> dict:
    import torch

    from medlite.data import load_dataset
    from medlite.models import create
    from medlite.recipe import load_recipe
    from medlite.train import fit

    overrides = [f"teacher.epochs={args.epochs}"]
    if mode == "ddp2":
        overrides += ["trainer.devices=2", "trainer.strategy=ddp"]
    recipe = load_recipe("breastmnist", overrides)
    threads = {"single": cores, "single1": 1}.get(mode, max(1, cores // 2))
    load = os.getloadavg()[0]  # the machine is shared: how busy it was when this run started
    torch.set_num_threads(threads)  # the forked ranks inherit it
    dataset = load_dataset(recipe.data, Path(args.data_root), recipe.seed)
    torch.manual_seed(recipe.seed)
    t = recipe.teacher
    model = create(t.arch, dataset.num_classes, dataset.channels, dataset.image_size, pretrained=t.pretrained)
    with tempfile.TemporaryDirectory() as logs:
        start = time.perf_counter()
        result = fit(model, dataset, t, data_cfg=recipe.data, seed=recipe.seed, log_dir=Path(logs), device="cpu",
                     progress=False, trainer_cfg=recipe.trainer)
        wall = time.perf_counter() - start
    return {"mode": mode, "processes": 2 if mode == "ddp2" else 1, "threads_per_process": threads, "load_1min": round(load, 1),
            "wall_s": round(wall, 1), "epoch_s_median": round(sorted(result.epoch_seconds)[len(result.epoch_seconds) // 2], 2),
            "best_val_auc": round(result.best_val_auc, 4), "best_epoch": result.best_epoch, "arch": t.arch,
            "epochs": args.epochs, "global_batch": t.batch_size, "n_train": len(dataset.splits["train"]),
            "n_val": len(dataset.splits["val"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("MEDLITE_DATA_ROOT"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp_cpu_2cores.md"))
    parser.add_argument("--machine", default="2-core VM, shared")
    parser.add_argument("--modes", default="single,ddp2,single1",
                        help="single: 1 process, every core as threads; single1: 1 process, 1 thread; ddp2: 2 processes")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = [one(mode, args, cores) for mode in args.modes.split(",")]
    command = f"python benchmarks/ddp_cpu.py --epochs {args.epochs} --modes {args.modes}"
    lines = [f"# DDP on CPU: the default recipe's teacher, 1 process vs 2", "",
             f"- command: `{command}`", f"- machine: {args.machine} ({cores} cores, {platform.processor() or platform.machine()})",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- teacher: {rows[0]['arch']}, {args.epochs} epochs (the recipe trains 40), global batch {rows[0]['global_batch']}, "
             f"{rows[0]['n_train']} training / {rows[0]['n_val']} validation images", "",
             "| processes | threads each | load at start | wall s | median epoch s | best val AUC | best epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['load_1min']} | {r['wall_s']} | "
                     f"{r['epoch_s_median']} | {r['best_val_auc']} | {r['best_epoch']} |")
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
