"""DDP helpers for `fit()`: loaders built inside each rank (when its rank is known) and rank 0's
results (best weights, best epoch, history) handed back to the launching process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np


def index_data(n_train: int, n_val: int, labels: np.ndarray, batch_size: int, balance: str, seed: int,
               make_loaders: Callable) -> L.LightningDataModule:
    class IndexData(L.LightningDataModule):
        """Index-batch loaders for this process's rank (`make_loaders` is train._loaders)."""

        def setup(self, stage: str) -> None:
            self.loaders = make_loaders(n_train, n_val, labels, batch_size, balance, seed,
                                        world=self.trainer.world_size, rank=self.trainer.global_rank)

        def train_dataloader(self):
            return self.loaders[0]

        def val_dataloader(self):
            return self.loaders[1] if n_val else []

    return IndexData()


class ShareResult(L.Callback):
    """Rank 0 writes what the launching process needs; `load` reads it there (then removes it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        state = module.best_state if module.best_state is not None else module.model.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(self.folder / "ddp_best.safetensors"))
        facts = {"best_score": module.best_score, "best_epoch": module.best_epoch, "history": module.history,
                 "has_best": module.best_state is not None, "world_size": trainer.world_size}
        (self.folder / "ddp_result.json").write_text(json.dumps(facts))

    @staticmethod
    def load(folder: Path, module) -> None:
        from safetensors.torch import load_file

        facts = json.loads((folder / "ddp_result.json").read_text())
        state = load_file(str(folder / "ddp_best.safetensors"))
        module.best_state = state if facts["has_best"] else None
        module.best_score = tuple(facts["best_score"]) if facts["best_score"] is not None else None
        module.best_epoch = facts["best_epoch"]
        module.history[:] = facts["history"]
        if not facts["has_best"]:
            module.model.load_state_dict(state)
        for name in ("ddp_result.json", "ddp_best.safetensors"):
            (folder / name).unlink(missing_ok=True)
