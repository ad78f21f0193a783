"""The LightningModule: the science (loss, metrics) lives here, the data in TrainData, the loop in the Trainer."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import torch

from medlite.distill.methods import StudentOutput, TeacherOutput
from medlite.models.taps import FeatureTaps
from medlite.task import SINGLE_LABEL_TASK, Task
from medlite.train.augment import augment, mixup, resize_to
from medlite.train.selection import FACTS_KEY, ValScore


class ClassifierModule(L.LightningModule):
    """Trains `model` on the uint8 image batches of `medlite.train.data.TrainData`.

    With teachers and a distillation `method` (see `medlite.distill.methods`) the loss is the
    method's; nothing here knows which method it is. The teachers' logits come either with the
    batch, from the data's bank of fixed augmented views (cheap: no teacher runs during training),
    or from a live forward pass on the same augmented batch (feature methods, whose taps are
    caught with forward hooks). Each validation pass is recorded in `last_validation`; which one
    is best is `medlite.train.selection`'s call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg,
        *,
        mean: float,
        std: float,
        augment_preset: str,
        class_weights: torch.Tensor | None = None,
        teachers: list[torch.nn.Module] | None = None,
        method=None,
        teacher_weights: list[float] | None = None,
        seed: int = 0,
        input_size: int | None = None,
        teacher_sizes: list[int] | None = None,
        mixup: float = 0.0,
        task: Task = SINGLE_LABEL_TASK,
        pos_weight: torch.Tensor | None = None,
        loss: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.mean, self.std = mean, std
        self.augment_preset = augment_preset
        # A registered submodule: its trainable parts (adapters, exits) are optimised, never exported.
        self.method = method
        self.teacher_weights = teacher_weights
        # Hidden from Lightning in a tuple: the teachers must stay frozen and in eval mode.
        self._teachers = tuple(t.eval().requires_grad_(False) for t in teachers or [])
        self._student_taps = self._teacher_taps = None
        self.register_buffer("class_weights", class_weights, persistent=False)
        # Multi-label data (`task.multilabel`): labels are multi-hot rows, the hard loss is the task's
        # (BCE or the asymmetric loss, `loss`), with a per-label `pos_weight` for `data.balance: class_weights`.
        self.task = task
        self.loss_kind = loss or "bce"
        self.register_buffer("pos_weight", pos_weight, persistent=False)
        self.generator = torch.Generator().manual_seed(seed)  # the live augmentation's (and mixup's) draws
        # A cross-resolution student sees each view at its own size, each teacher at its own (None: as given).
        self.input_size = input_size
        self.teacher_sizes = list(teacher_sizes) if teacher_sizes else [None] * len(self._teachers)
        self.mixup = mixup
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_validation: ValScore | None = None  # the latest validation pass, exact (see selection)
        self.auc_missing = 0  # validation passes whose AUC could not be computed
        self.val_passes = 0
        self.history: list[dict] = []

    # -- data -------------------------------------------------------------------------
    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def on_fit_start(self) -> None:
        self._teachers = tuple(t.to(self.device).eval() for t in self._teachers)
        if self.method is not None:
            if self.method.student_taps():
                self._student_taps = FeatureTaps(self.model, self.method.student_taps(), "student")
            if self.method.teacher_taps():
                self._teacher_taps = FeatureTaps(self._teachers[0], self.method.teacher_taps(), "teacher")

    def on_fit_end(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()
        self._student_taps = self._teacher_taps = None

    # -- steps ------------------------------------------------------------------------
    def _teacher_output(self, x: torch.Tensor, bank_logits: torch.Tensor | None) -> TeacherOutput:
        if bank_logits is not None:  # views x ... -> one tensor per teacher
            return TeacherOutput([bank_logits[:, i].float() for i in range(bank_logits.shape[1])], self.teacher_weights,
                                 task=self.task)
        with torch.no_grad():
            logits = [t(resize_to(x, size)).float() for t, size in zip(self._teachers, self.teacher_sizes)]
        features = self._teacher_taps.take() if self._teacher_taps is not None else {}
        return TeacherOutput(logits, self.teacher_weights, features, task=self.task)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """`batch` from TrainData: uint8 images (a bank's fixed views, or augmented here), labels, bank logits."""
        labels, bank_logits = batch["label"], batch["teacher_logits"]
        x = batch["image"].float() / 255
        if not batch["fixed_view"]:
            x = augment(x, self.augment_preset, self.generator)
        partner, lam = None, 1.0
        if self.mixup:  # the mixed batch is what teacher and student both see (function matching)
            x, partner, lam = mixup(x, self.mixup, self.generator)
        x = self.normalize(x)
        logits = self.model(resize_to(x, self.input_size))

        def hard_loss(z: torch.Tensor) -> torch.Tensor:
            if self.task.multilabel:
                # Mixup mixes multi-hot targets (lam * y + (1 - lam) * y[partner]); BCE is linear in its
                # target, so this equals mixing the two losses, and it is the usual form for the others.
                y = labels.float() if partner is None else lam * labels.float() + (1 - lam) * labels[partner].float()
                return self.task.hard_loss(z, y, pos_weight=self.pos_weight, loss=self.loss_kind)

            def ce(y: torch.Tensor) -> torch.Tensor:
                return self.task.hard_loss(z, y, class_weights=self.class_weights,
                                           label_smoothing=self.cfg.label_smoothing)

            return ce(labels) if partner is None else lam * ce(labels) + (1 - lam) * ce(labels[partner])

        if self.method is not None:
            student = StudentOutput(logits, self._student_taps.take() if self._student_taps is not None else {})
            teacher = self._teacher_output(x, bank_logits)
            loss = self.method.loss(student, teacher, labels, hard_loss=hard_loss, epoch=self.current_epoch)
        else:
            loss = hard_loss(logits)
        acc = self.task.torch_accuracy(logits, labels)
        # DDP: each rank saw its share of the epoch; the logged epoch metrics are the mean over ranks.
        sync = self.trainer.world_size > 1
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=sync)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=sync)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(self.normalize(batch["image"].float() / 255))
        self._val_outputs.append((logits.float().detach(), batch["label"], batch["idx"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        logits = torch.cat([o[0] for o in self._val_outputs])
        labels = torch.cat([o[1] for o in self._val_outputs])
        if self.trainer.world_size > 1:
            # DDP: every rank scored its (padded) shard; gather them and keep each image once, so
            # the metrics and the best epoch are those of the whole validation split on every rank.
            idx = torch.cat([o[2] for o in self._val_outputs])
            logits, labels, idx = (t.flatten(0, 1) for t in self.all_gather((logits, labels, idx)))
            _, first = np.unique(idx.cpu().numpy(), return_index=True)
            first = torch.as_tensor(first, device=logits.device)
            logits, labels = logits[first], labels[first]
        self._val_outputs.clear()
        y = labels.cpu().numpy()
        # The task's unweighted loss, its validation score (macro AUC, or the mean AUC over labels) and accuracy.
        loss = self.task.validation_loss(logits, labels)
        probs = self.task.torch_probabilities(logits).cpu().numpy()
        auc, acc = self.task.validation_auc(probs, y), self.task.accuracy(probs, y)
        # An AUC that cannot be computed (one class in the validation split, non-finite outputs) is
        # logged as NaN, never as a number that looks like a (terrible) score.
        # Under DDP every rank logs the same values (the whole split, gathered): syncing keeps them.
        self.log_dict({"val_loss": loss, "val_acc": acc, "val_auc": float(auc) if np.isfinite(auc) else float("nan")},
                      sync_dist=self.trainer.world_size > 1)
        if self.trainer.sanity_checking:
            return
        # Which pass is best is the checkpoint callback's call (medlite.train.selection); it reads
        # the exact values here, and a saved checkpoint records them (on_save_checkpoint).
        self.val_passes += 1
        if not np.isfinite(auc):
            self.auc_missing += 1
        epoch = -1 if self.trainer.state.fn == "validate" else self.current_epoch  # -1: the starting weights
        self.last_validation = ValScore(epoch, float(auc), loss)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.last_validation is not None:
            checkpoint[FACTS_KEY] = dataclasses.asdict(self.last_validation)

    def configure_optimizers(self):
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.method is not None:  # a method's own trainable parts (adapters, exits)
            params += [p for p in self.method.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        epochs = max(1, self.trainer.max_epochs)
        if cfg.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        elif cfg.schedule == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=0.1)
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
