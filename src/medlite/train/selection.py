"""What "best" means: the epoch with the highest validation AUC, kept on disk by a ModelCheckpoint.

Ranking: highest validation AUC, ties broken by lower validation loss; an epoch whose AUC cannot
be computed (one class in the validation split, non-finite outputs) ranks by its loss alone,
below every epoch with an AUC. With `score_start` (fine-tuning) the starting weights, scored by
`Trainer.validate` before training, are the first candidate (epoch -1): fine-tuning never ends
worse than it started on validation.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

MONITOR = "val_auc"  # the metric ClassifierModule logs each validation pass
FACTS_KEY = "medlite_validation"  # where a checkpoint records which validation pass its weights are


@dataclass(frozen=True)
class ValScore:
    """One validation pass, exactly as computed (the logged metrics are float32)."""

    epoch: int  # -1: the starting weights (Trainer.validate before fit)
    auc: float  # NaN when it could not be computed
    loss: float

    def rank(self) -> tuple[float, float]:
        return (self.auc if math.isfinite(self.auc) else -math.inf, -self.loss)


class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint(monitor="val_auc", mode="max", save_top_k=1)`, weights only, ranking as above.

    Lightning compares the float32 monitored value alone; ties on AUC (frequent on small validation
    splits, where AUC takes few values) are broken here by the loss, and the comparison uses the
    module's exact `last_validation` (float64) rather than the logged float32.
    """

    def __init__(self, dirpath: str | os.PathLike, *, score_start: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename="best-{epoch}", monitor=MONITOR, mode="max", save_top_k=1,
                         save_weights_only=True, enable_version_counter=False)
        self.score_start = score_start
        self.best: ValScore | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            # Our own start.ckpt (the scored starting weights, `_keep_start`) is in the fresh directory.
            if self.score_start:
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        score = trainer.lightning_module.last_validation
        better = self.best is None or score.rank() > self.best.rank()
        # Every DDP rank scores the whole (gathered) validation split: they agree; Lightning checks it.
        better = trainer.strategy.reduce_boolean_decision(bool(better))
        if better:
            self.best = score
        return better

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            if self.score_start and not trainer.sanity_checking:
                self._keep_start(trainer, pl_module)
            return
        super().on_validation_end(trainer, pl_module)

    def _keep_start(self, trainer, pl_module) -> None:
        """The starting weights as the first candidate: saved like any epoch, replaced when one beats them."""
        path = os.path.join(self.dirpath, "start.ckpt")
        trainer.save_checkpoint(path, weights_only=True)
        score = pl_module.last_validation
        value = torch.tensor(score.rank()[0])
        self.best = score
        self.best_k_models = {path: value}
        self.best_model_path = self.kth_best_model_path = path
        self.best_model_score = self.kth_value = value


def load_best(path: str | os.PathLike, module: torch.nn.Module) -> ValScore:
    """Load a BestCheckpoint's weights into `module` (the LightningModule) and say which pass they are."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    facts = checkpoint[FACTS_KEY]
    return ValScore(int(facts["epoch"]), float(facts["auc"]), float(facts["loss"]))


@dataclass
class Selection:
    best_epoch: int
    best_val_auc: float | None
    selected_by: str  # val_auc, val_loss (AUC not computable), last_epoch
    notes: list[str] = field(default_factory=list)


def select(best: ValScore | None, *, select_best: bool, epochs: int, history: list[dict],
           val_passes: int, auc_missing: int) -> Selection:
    """The facts fit() reports about the weights it kept.

    `best` is the loaded checkpoint's validation pass (None: no checkpoint was kept, i.e. no
    validation split or `select_best=False`, and the model holds the last epoch's weights).
    """
    notes: list[str] = []
    best_epoch = best.epoch if best is not None else epochs - 1
    best_auc = best.auc if best is not None else None
    if not select_best:
        best_auc = history[-1].get("val_auc") if history else None
    selected_by = "val_auc"
    if not val_passes:  # no validation split: the last epoch
        selected_by = "last_epoch"
        if select_best:
            notes.append("no validation split: kept the last epoch")
    elif not select_best:
        selected_by = "last_epoch"
    if best_auc is not None and not math.isfinite(best_auc):
        best_auc = None
    if auc_missing and select_best and val_passes:
        if best_auc is None:
            selected_by = "val_loss"
        notes.append(
            f"validation AUC could not be computed in {auc_missing} of {val_passes} "
            "validation passes (one class in the validation split?)"
            + ("; best epoch chosen by validation loss" if best_auc is None else "; those epochs ranked by loss, below the rest")
        )
    return Selection(best_epoch, float(best_auc) if best_auc is not None else None, selected_by, notes)
