"""What `trainer.telemetry` costs: the default student (medlite_dsconv) trained on BreastMNIST (546 training
images, 28 px) for 4 epochs, without telemetry and with {every: 2, images: 4}; seconds per epoch, the epochs
that drew, and the size of the TensorBoard event file.

    PYTHONPATH=src python benchmarks/telemetry_cost.py OUT.md   (MEDLITE_DATA_ROOT: the MedMNIST files)
    PYTHONPATH=src python benchmarks/telemetry_cost.py OUT.md --draw   (appends: the drawing alone, timed)
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from medlite.data import load_dataset
from medlite.models import create
from medlite.recipe import load_recipe
from medlite.train import fit
from medlite.train.callbacks import GPU_MEMORY


def main(out: Path) -> None:
    data_root = Path(os.environ.get("MEDLITE_DATA_ROOT", "."))
    rows = []
    for label, overrides in (("off", []), ("every 2, 4 images", ["trainer.telemetry={every: 2, images: 4}"])):
        recipe = load_recipe("breastmnist", overrides)
        data = load_dataset(recipe.data, data_root, recipe.seed)
        torch.manual_seed(0)
        model = create(recipe.student.arch, data.num_classes, data.channels, data.image_size)
        cfg = recipe.student.model_copy(update={"epochs": 4})
        with tempfile.TemporaryDirectory() as logs:
            start = time.perf_counter()
            result = fit(model, data, cfg, data_cfg=recipe.data, seed=0, log_dir=Path(logs), trainer_cfg=recipe.trainer)
            total = time.perf_counter() - start
            events = sum(p.stat().st_size for p in Path(logs).glob("events.out.tfevents.*"))
        rows.append((label, result.epoch_seconds, total, events, [r[GPU_MEMORY] for r in result.history]))
    lines = [
        "# trainer.telemetry: what it costs on a CPU",
        "",
        f"Command: `PYTHONPATH=src python benchmarks/telemetry_cost.py {out}`; machine: 2-core VM, shared "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads); "
        f"{datetime.date.today().isoformat()}.",
        "",
        "BreastMNIST (546 training images, 28 px), medlite_dsconv, 4 epochs, batch 64. With telemetry on, epochs",
        "2 and 4 also draw (feature maps of 3 stages of 4 validation images, the gradient-flow figure and",
        "histogram): after EpochLog timed the epoch, so the drawing is in the fit seconds, not the epoch seconds;",
        "the per-step gradient norms of those epochs are in their epoch seconds.",
        "",
        "| telemetry | epoch seconds (1, 2, 3, 4) | fit seconds | event file bytes | gpu_max_mem_mb per epoch |",
        "|---|---|---|---|---|",
    ]
    for label, epochs, total, events, memory in rows:
        lines.append(f"| {label} | {', '.join(f'{s:.2f}' for s in epochs)} | {total:.1f} | {events:,} | {memory} (CPU: null) |")
    lines += ["", "The machine is shared with other jobs: differences under about 20 % are noise."]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def draw(out: Path, repeats: int = 5) -> None:
    """The drawing alone (what one telemetry epoch adds after its training): the median of `repeats`."""
    import statistics
    from types import SimpleNamespace

    from torch.utils.tensorboard import SummaryWriter

    from medlite.train.callbacks import Telemetry, pick_images

    data_root = Path(os.environ.get("MEDLITE_DATA_ROOT", "."))
    recipe = load_recipe("breastmnist", ["trainer.telemetry={every: 2, images: 4}"])
    data = load_dataset(recipe.data, data_root, recipe.seed)
    val = data.splits["val"]
    lines = ["", "The drawing alone (one telemetry epoch's images after its training; median of "
             f"{repeats}, {datetime.date.today().isoformat()}, same machine):", "",
             "| model | features + inputs s | gradient figure + histogram s |", "|---|---|---|"]
    for arch in ("medlite_dsconv", "small_pooled_resnet18"):
        torch.manual_seed(0)
        model = create(arch, data.num_classes, data.channels, data.image_size)
        module = SimpleNamespace(model=model, device=torch.device("cpu"), std=data.std, mean=data.mean,
                                 input_size=None, normalize=lambda x: (x - data.mean) / data.std)
        tele = Telemetry(recipe.trainer.telemetry, val.images[pick_images(val.labels, 4)])
        tele._norms = {n: p.detach().norm() for n, p in model.named_parameters() if p.ndim > 1}
        tele._steps = 1
        feats, grads = [], []
        with tempfile.TemporaryDirectory() as logs:
            writer = SummaryWriter(logs)
            for i in range(repeats):
                start = time.perf_counter()
                tele._draw(writer, module, i)
                feats.append(time.perf_counter() - start)
                start = time.perf_counter()
                tele._gradients(writer, i)
                grads.append(time.perf_counter() - start)
            writer.close()
        lines.append(f"| {arch} | {statistics.median(feats):.3f} | {statistics.median(grads):.3f} |")
    with open(out, "a") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if "--draw" in sys.argv[2:]:
        draw(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
