"""The LightningModule: the science (loss, metrics, what "best" means) lives here, the loop in the Trainer."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from medlite.evaluate.metrics import auc as auc_score
from medlite.train.augment import augment


class ClassifierModule(L.LightningModule):
    """Trains `model` on in-memory uint8 images; batches arrive as index tensors (no per-sample Python).

    With teachers and a distillation `method` (see `medlite.distill.methods`) the loss is the
    method's; nothing here knows which method it is. The teachers' logits come either from a
    precomputed bank of fixed augmented views (`teacher_bank`, cheap: no teacher runs during
    training) or from a live forward pass on the same augmented batch (feature methods, whose
    taps are caught with forward hooks). A bank without logits fixes the views of a scratch run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg,
        *,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        val_images: torch.Tensor,
        val_labels: torch.Tensor,
        mean: float,
        std: float,
        augment_preset: str,
        class_weights: torch.Tensor | None = None,
        teachers: list[torch.nn.Module] | None = None,
        method=None,
        teacher_weights: list[float] | None = None,
        teacher_bank: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        seed: int = 0,
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
        self.register_buffer("train_images", train_images, persistent=False)
        self.register_buffer("train_labels", train_labels, persistent=False)
        self.register_buffer("val_images", val_images, persistent=False)
        self.register_buffer("val_labels", val_labels, persistent=False)
        self.register_buffer("class_weights", class_weights, persistent=False)
        if teacher_bank is not None:
            self.register_buffer("bank_images", teacher_bank[0], persistent=False)
            self.register_buffer("bank_logits", teacher_bank[1], persistent=False)  # None: views only
        else:
            self.bank_images = self.bank_logits = None
        self.generator = torch.Generator().manual_seed(seed)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.best_state: dict | None = None
        self.best_score: tuple[float, float] | None = None
        self.best_epoch = -1
        self.auc_missing = 0  # validation passes whose AUC could not be computed
        self.val_passes = 0
        self.history: list[dict] = []

    # -- data -------------------------------------------------------------------------
    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def on_fit_start(self) -> None:
        from medlite.models.taps import FeatureTaps

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
    def _teacher_output(self, x: torch.Tensor, bank_logits: torch.Tensor | None):
        from medlite.distill.methods import TeacherOutput

        if bank_logits is not None:  # views x ... -> one tensor per teacher
            return TeacherOutput([bank_logits[:, i].float() for i in range(bank_logits.shape[1])], self.teacher_weights)
        with torch.no_grad():
            logits = [t(x).float() for t in self._teachers]
        features = self._teacher_taps.take() if self._teacher_taps is not None else {}
        return TeacherOutput(logits, self.teacher_weights, features)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        from medlite.distill.methods import StudentOutput

        labels = self.train_labels[idx]
        bank_logits = None
        if self.bank_images is not None:
            view = self.current_epoch % self.bank_images.shape[0]
            x = self.bank_images[view][idx].float() / 255
            if self.bank_logits is not None:
                bank_logits = self.bank_logits[view][idx]
        else:
            x = augment(self.train_images[idx].float() / 255, self.augment_preset, self.generator)
        x = self.normalize(x)
        logits = self.model(x)

        def hard_loss(z: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(z, labels, weight=self.class_weights, label_smoothing=self.cfg.label_smoothing)

        if self.method is not None:
            student = StudentOutput(logits, self._student_taps.take() if self._student_taps is not None else {})
            teacher = self._teacher_output(x, bank_logits)
            loss = self.method.loss(student, teacher, labels, hard_loss=hard_loss, epoch=self.current_epoch)
        else:
            loss = hard_loss(logits)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(idx))
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=len(idx))
        return loss

    def validation_step(self, idx: torch.Tensor, batch_idx: int) -> None:
        x = self.normalize(self.val_images[idx].float() / 255)
        logits = self.model(x)
        self._val_outputs.append((logits.float().detach(), self.val_labels[idx], idx))

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
        loss = float(F.cross_entropy(logits, labels))
        probs = torch.softmax(logits, 1).cpu().numpy()
        y = labels.cpu().numpy()
        auc = auc_score(probs, y)
        acc = float((probs.argmax(1) == y).mean())
        # An AUC that cannot be computed (one class in the validation split, non-finite outputs) is
        # logged as NaN, never as a number that looks like a (terrible) score.
        self.log_dict({"val_loss": loss, "val_acc": acc, "val_auc": float(auc) if np.isfinite(auc) else float("nan")})
        if self.trainer.sanity_checking:
            return
        # Best epoch: highest validation AUC, ties broken by lower validation loss; an epoch whose
        # AUC cannot be computed ranks by its loss alone, below every epoch with an AUC. The
        # starting weights, when scored (fine-tuning), count as epoch -1.
        self.val_passes += 1
        if not np.isfinite(auc):
            self.auc_missing += 1
        score = (float(auc) if np.isfinite(auc) else float("-inf"), -loss)
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            self.best_epoch = -1 if self.trainer.state.fn == "validate" else self.current_epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

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

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(copy.deepcopy(self.best_state))
