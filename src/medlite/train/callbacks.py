"""The per-epoch record: one history row and one plain line per epoch, and the `epoch:<label>:<n>` fault point."""

from __future__ import annotations

import time
from typing import Callable

import lightning as L

from medlite.runstate import fault_point


class EpochLog(L.Callback):
    """Times each training epoch, appends its metrics to `module.history` and reports one line per epoch."""

    def __init__(self, label: str, say: Callable[[str], None] | None) -> None:
        self.label, self.say = label, say
        self.start = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        seconds = time.perf_counter() - self.start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        module.log("epoch_time", seconds, sync_dist=trainer.world_size > 1)  # DDP: the mean over ranks
        row = {"epoch": trainer.current_epoch, "seconds": round(seconds, 3), **{k: round(v, 5) for k, v in metrics.items()}}
        module.history.append(row)
        fault_point(f"epoch:{self.label}:{trainer.current_epoch + 1}")  # tests kill a run mid-training here
        if self.say and trainer.is_global_zero:
            self.say(self.line(self.label, row, trainer.max_epochs))

    @staticmethod
    def line(label: str, row: dict, epochs: int) -> str:
        """The plain line of one epoch's history row."""
        val = f" val_auc {row['val_auc']:.3f} val_acc {row['val_acc']:.3f}" if "val_auc" in row else ""
        return (f"{label} epoch {row['epoch'] + 1}/{epochs}"
                f" loss {row.get('train_loss', float('nan')):.4f}{val} ({row['seconds']:.1f}s)")
