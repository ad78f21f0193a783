"""`fit()`: train one model with Lightning, restore its best-validation-AUC epoch, return the facts.

The parts, each in its own module: `device` (device, DDP placement, precision), `data` (the
LightningDataModule, teacher bank included), `teachers` (distillation method and teachers),
`module` (the LightningModule: loss and metrics), `selection` (the ModelCheckpoint that keeps the
best epoch, and the facts reported about it), `callbacks` (per-epoch log), `distributed` (DDP),
`launched` (the ranks torchrun or srun started), `quiet` (what training leaves out of the output).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from medlite.errors import UsageError
from medlite.task import pos_weight as label_pos_weight, task_of
from medlite.train import launched
from medlite.train.callbacks import GPU_MEMORY, EpochLog, Telemetry, pick_images
from medlite.train.data import TrainData, class_weights
from medlite.train.device import placement, precision, resolve_device
from medlite.train.distributed import ShareFacts, spawn_sharing
from medlite.train.module import ClassifierModule
from medlite.train.quiet import quiet_lightning_info, training_warnings
from medlite.train.selection import BestCheckpoint, load_best, select
from medlite.train.teachers import teaching

__all__ = ["FitResult", "fit", "resolve_device"]


@dataclass
class FitResult:
    best_epoch: int
    best_val_auc: float | None
    epochs: int
    epoch_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    teacher_cache_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    selected_by: str = "val_auc"  # what chose best_epoch: val_auc, val_loss (AUC not computable), last_epoch
    warnings: list[str] = field(default_factory=list)
    processes: dict | None = None  # under DDP: how many ranks, on how many nodes, started how; the batches

    def to_dict(self) -> dict:
        mean = float(np.mean(self.epoch_seconds)) if self.epoch_seconds else 0.0
        extra = {"processes": self.processes} if self.processes else {}
        return {
            "best_epoch": self.best_epoch,
            "best_val_auc": self.best_val_auc,
            "epochs": self.epochs,
            "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],
            "mean_epoch_s": round(mean, 3),
            "seconds": round(self.seconds, 2),
            "teacher_cache_seconds": round(self.teacher_cache_seconds, 4),
            "history": self.history,
            "selected_by": self.selected_by,
            "warnings": self.warnings,
            **extra,
        }


class EpochCSVLogger(CSVLogger):
    """Lightning's CSVLogger, whose epoch rows always carry the GPU memory column: empty (null) on a CPU,
    where nothing is logged for it, so a CPU log has the same columns as a GPU one."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "epoch_time" in metrics and GPU_MEMORY not in metrics:
            metrics = {**metrics, GPU_MEMORY: None}
        super().log_metrics(metrics, step)


def hard_loss_kind(task, loss: str | None) -> str | None:
    """The recipe's `loss` (teacher/student sections) checked against the data's task: cross-entropy for one
    class per image, `bce` (default) or `asymmetric` for multi-label data. None: the task's default."""
    if loss is None:
        return None
    allowed = ("bce", "asymmetric") if task.multilabel else ("cross_entropy",)
    if loss not in allowed:
        kind = "multi-label" if task.multilabel else "single-label (one class per image)"
        raise UsageError(f"loss: {loss!r} is not a loss for {kind} data; use {' or '.join(allowed)}")
    return loss


def _one_process_scorer(accelerator: str, precision: str, deterministic: bool, best_ckpt: BestCheckpoint,
                        log_dir: Path) -> L.Trainer:
    """A one-process Trainer to score the starting weights before DDP forks or spawns: the
    checkpoint callback keeps that score, which the ranks then inherit (forked or pickled)."""
    return L.Trainer(
        accelerator=accelerator, devices=1, strategy="auto", precision=precision, logger=False,
        callbacks=[best_ckpt], enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1.0,
        deterministic=deterministic, default_root_dir=str(log_dir),
    )


def fit(
    model,
    dataset,
    cfg,
    *,
    data_cfg,
    seed: int,
    log_dir: Path,
    label: str = "train",
    teacher=None,
    distill=None,
    fixed_views: bool = False,
    callbacks: tuple = (),
    device: str = "auto",
    say: Callable[[str], None] | None = None,
    progress: bool | None = None,
    teacher_views: int = 8,
    select_best: bool = True,
    score_start: bool = False,
    trainer_cfg=None,
    input_size: int | None = None,
    teacher_sizes: list[int] | None = None,
    mixup: float | None = None,
) -> FitResult:
    """Train `model` (in place) for `cfg.epochs` and restore the epoch with the best validation AUC.

    `cfg` is a recipe TrainConfig (optimizer, lr, schedule, batch size, label smoothing).
    With `teacher` (a module, or a list: an ensemble) and `distill` (a recipe distill section) the
    loss is that distillation method's. Logit methods read the teachers' outputs from a bank of
    fixed augmented views; `fixed_views=True` gives a run without a teacher the very same views
    (the scratch baseline of a logit method), so only the loss differs. `select_best=False`
    keeps the last epoch (e.g. when callbacks change the model as training goes on).
    `score_start=True` (fine-tuning) also scores the starting weights on validation: when no
    epoch beats them, they are kept and `best_epoch` is -1, so fine-tuning never makes it worse.
    """
    start = time.perf_counter()
    if cfg.epochs == 0:
        return FitResult(best_epoch=-1, best_val_auc=None, epochs=0)
    task = task_of(dataset)
    task.check_balance(data_cfg.balance)
    loss_kind = hard_loss_kind(task, getattr(cfg, "loss", None))
    if task.multilabel and cfg.label_smoothing:
        raise UsageError("label_smoothing: defined for cross-entropy over one softmax, not for multi-label data; set it to 0")
    device = resolve_device(device)
    where = placement(trainer_cfg, device, data_cfg.balance)  # refused before any work
    where, placement_note = _unpicklable(model, where)
    L.seed_everything(seed, workers=True, verbose=False)
    if input_size == dataset.image_size:
        input_size = None
    if mixup is None:
        mixup = getattr(distill, "mixup", 0.0) if teacher is not None else 0.0
    teach = teaching(model, dataset, teacher, distill, seed=seed, epochs=cfg.epochs, fixed_views=fixed_views,
                     teacher_views=teacher_views, input_size=input_size)
    if teacher_sizes is not None and len(teacher_sizes) != len(teach.teachers or teach.bank_teachers):
        raise ValueError(f"fit: {len(teacher_sizes)} teacher sizes for {len(teach.teachers or teach.bank_teachers)} teachers")
    data = TrainData(dataset, batch_size=cfg.batch_size, balance=data_cfg.balance, augment=data_cfg.augment, seed=seed,
                     input_size=input_size)
    if teach.bank_views:
        data.build_bank(teach.bank_teachers, teach.bank_views, device, teacher_sizes=teacher_sizes)
    weights = pos_weight = None
    if data_cfg.balance == "class_weights" and task.multilabel:  # per label: negatives / positives
        pos_weight = torch.tensor(label_pos_weight(dataset.splits["train"].labels), dtype=torch.float32)
    elif data_cfg.balance == "class_weights":
        weights = class_weights(dataset.splits["train"].labels, dataset.num_classes)
    module = ClassifierModule(
        model, cfg, mean=dataset.mean, std=dataset.std, augment_preset=data_cfg.augment, class_weights=weights,
        teachers=teach.teachers or None, method=teach.method, teacher_weights=teach.weights, seed=seed,
        input_size=input_size, teacher_sizes=teacher_sizes, mixup=mixup, task=task, pos_weight=pos_weight,
        loss=loss_kind,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    quiet_lightning_info()
    # The best epoch's weights go to a checkpoint file, read back below; the caller saves the model.
    with tempfile.TemporaryDirectory(prefix="medlite-best-") as best_dir, training_warnings():
        best_ckpt = BestCheckpoint(best_dir, score_start=score_start) if select_best and data.n_val else None
        extra = [RichProgressBar(leave=False)] if progress else []
        telemetry = getattr(trainer_cfg, "telemetry", None)
        if telemetry is not None:  # images of validation images (never test ones): none without a validation split
            val = dataset.splits["val"]
            extra.append(Telemetry(telemetry, val.images[pick_images(val.labels, telemetry.images)]))
        if where.world > 1:
            extra.append(ShareFacts(log_dir))
        # Spawned ranks get the trainer pickled: `say` (a closure, a console) stays here and the
        # epoch lines are said once training is back (from rank 0's history).
        spawned = where.strategy == "ddp_spawn" and where.world > 1
        pickled = spawned or where.launched  # the trainer travels to other processes: no closures in it
        epoch_say = None if progress or pickled else say
        trainer = L.Trainer(
            max_epochs=cfg.epochs,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=where.devices,
            num_nodes=where.num_nodes,
            strategy=where.strategy,
            use_distributed_sampler=False,  # TrainData's index loaders shard themselves
            precision=precision(trainer_cfg, device),
            logger=[EpochCSVLogger(str(log_dir), name="", version=""), TensorBoardLogger(str(log_dir), name="", version="")],
            callbacks=[EpochLog(label, epoch_say), LearningRateMonitor("epoch"), *extra, *callbacks,
                       *([best_ckpt] if best_ckpt else [])],
            enable_checkpointing=best_ckpt is not None,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if data.n_val else 0,
            log_every_n_steps=1,
            deterministic=bool(trainer_cfg is not None and trainer_cfg.deterministic),
            default_root_dir=str(log_dir),
        )
        if best_ckpt is not None and score_start:
            # Under DDP the starting weights are scored here, in one process, before the ranks start:
            # a validate() of its own would run in child processes and its result die with them.
            scorer = trainer if where.world == 1 else _one_process_scorer(
                "gpu" if device == "cuda" else "cpu", precision(trainer_cfg, device),
                bool(trainer_cfg is not None and trainer_cfg.deterministic), best_ckpt, log_dir)
            scorer.validate(module, datamodule=data, verbose=False)
        if where.launched:
            launched.fit_everywhere(trainer, module, data)
        else:
            with spawn_sharing(spawned):
                trainer.fit(module, datamodule=data)
        if where.world > 1:
            ShareFacts.load(log_dir, module)  # the ranks trained in child processes: take rank 0's facts
        if pickled and say and not progress:
            for row in module.history:
                say(EpochLog.line(label, row, cfg.epochs))
        best = load_best(best_ckpt.best_model_path, module) if best_ckpt is not None else None
    model.cpu().eval()
    chosen = select(best, select_best=select_best, epochs=cfg.epochs, history=module.history,
                    val_passes=module.val_passes, auc_missing=module.auc_missing)
    return FitResult(
        best_epoch=chosen.best_epoch,
        best_val_auc=chosen.best_val_auc,
        epochs=cfg.epochs,
        epoch_seconds=[row["seconds"] for row in module.history],
        seconds=time.perf_counter() - start,
        teacher_cache_seconds=data.bank_seconds,
        history=module.history,
        selected_by=chosen.selected_by,
        warnings=chosen.notes + ([placement_note] if placement_note else []),
        processes=_processes(where, cfg.batch_size),
    )


def _unpicklable(model, where):
    """Spawned ranks (and a launcher's) get the model pickled, which torch refuses for a parametrized one
    (`torch.nn.utils.parametrize`, e.g. QAT's fake-quant). A spawn chosen only because the process runs
    threads (`fork_unsafe`) forks after all, said in the fit's warnings; a spawn the setup needs (GPUs,
    `strategy: ddp_spawn`, a launcher) is refused in one line."""
    from torch.nn.utils import parametrize

    if where.world <= 1 or where.strategy == "ddp_fork":
        return where, None
    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return where, None
    if where.strategy == "ddp_spawn" and where.fork_unsafe:
        return replace(where, strategy="ddp_fork"), (f"DDP ranks forked although {where.fork_unsafe}: a parametrized "
                                                     "model (e.g. QAT's fake-quant) cannot be pickled to spawned ranks")
    instead = ("run it without a launcher" if where.launched
               else "train it with trainer.devices: 1 or, on CPU, trainer.strategy: ddp")
    raise UsageError(f"trainer.strategy: a parametrized model (e.g. QAT's fake-quant) cannot be sent to ranks "
                     f"{'a launcher started' if where.launched else 'spawned'} (torch pickles it only through "
                     f"state_dict()); {instead}")


def _processes(where, batch_size: int) -> dict | None:
    """What DDP changes, for the record: the ranks and the batch each one takes (the global batch stays
    the recipe's, `TrainData` divides it; BatchNorm statistics are per rank)."""
    if where.world <= 1:
        return None
    world = launched.current()
    started = world.launcher if world is not None else where.strategy
    if where.strategy == "ddp_spawn" and where.fork_unsafe:
        started += f" (not forked: {where.fork_unsafe})"
    return {"processes": where.world, "nodes": where.num_nodes, "started_by": started,
            "global_batch": max(1, batch_size // where.world) * where.world,
            "per_process_batch": max(1, batch_size // where.world)}

