"""`fit()`: train one model with Lightning, restore its best-validation-AUC epoch, return the facts."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


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

    def to_dict(self) -> dict:
        mean = float(np.mean(self.epoch_seconds)) if self.epoch_seconds else 0.0
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
        }


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from medlite.errors import UsageError

        raise UsageError("device: 'cuda' requested but no CUDA GPU is available")
    return name


def _epoch_callback(label: str, say: Callable[[str], None] | None):
    import lightning as L

    from medlite.runstate import fault_point

    class EpochLog(L.Callback):
        """Times each training epoch and reports one plain line per epoch."""

        def on_train_epoch_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            seconds = time.perf_counter() - self.start
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            module.log("epoch_time", seconds)
            row = {"epoch": trainer.current_epoch, "seconds": round(seconds, 3), **{k: round(v, 5) for k, v in metrics.items()}}
            module.history.append(row)
            fault_point(f"epoch:{label}:{trainer.current_epoch + 1}")  # tests kill a run mid-training here
            if say and trainer.is_global_zero:
                val = f" val_auc {metrics['val_auc']:.3f} val_acc {metrics['val_acc']:.3f}" if "val_auc" in metrics else ""
                say(
                    f"{label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
                    f" loss {metrics.get('train_loss', float('nan')):.4f}{val} ({seconds:.1f}s)"
                )

    return EpochLog()


def _loaders(n_train: int, n_val: int, labels: np.ndarray, batch_size: int, balance: str, seed: int,
             world: int = 1, rank: int = 0):
    """DataLoaders of index batches: the module gathers the images from tensors it already holds.

    With `world` > 1 (DDP) each process gets its share of every epoch through a DistributedSampler
    (seeded, reshuffled each epoch) and `batch_size // world` images per step, so the global batch
    stays the recipe's; validation is sharded too (padded) and gathered whole by the module.
    """
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler
    from torch.utils.data.distributed import DistributedSampler

    class _EpochBatches(BatchSampler):
        def set_epoch(self, epoch: int) -> None:  # Lightning calls it each epoch; the DistributedSampler reshuffles
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)

    class _Indices(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, idx):
            return torch.as_tensor(idx, dtype=torch.long)

    if world > 1:
        per_rank = max(1, batch_size // world)
        sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        share = len(sampler)
        train = DataLoader(_Indices(n_train), sampler=_EpochBatches(sampler, per_rank, drop_last=share % per_rank == 1), batch_size=None)
        val_sampler = DistributedSampler(range(n_val), num_replicas=world, rank=rank, shuffle=False)
        val = DataLoader(_Indices(n_val), sampler=BatchSampler(val_sampler, 512, False), batch_size=None)
        return train, val
    generator = torch.Generator().manual_seed(seed)
    if balance == "sampler":
        counts = np.bincount(labels)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, n_train, replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(n_train), generator=generator)
    # A final batch of one image breaks BatchNorm: drop it only in that case.
    train = DataLoader(_Indices(n_train), sampler=BatchSampler(sampler, batch_size, drop_last=n_train % batch_size == 1), batch_size=None)
    val = DataLoader(_Indices(n_val), sampler=BatchSampler(SequentialSampler(range(n_val)), 512, False), batch_size=None)
    return train, val


def _placement(trainer_cfg, device: str, balance: str, score_start: bool) -> tuple[str, int, int, int]:
    """(Lightning strategy, devices, num_nodes, world size) for a recipe's `trainer` section.

    Several processes on one CPU machine run as `ddp_fork` (gloo): only training is forked, the
    rest of the pipeline runs once. One GPU with `ddp` is a world of one. Several GPUs or nodes
    would need each rank to run the whole command (Lightning's launcher): refused, not faked.
    """
    from medlite.errors import UsageError

    if trainer_cfg is None:
        return "auto", 1, 1, 1
    devices, nodes = trainer_cfg.devices, trainer_cfg.num_nodes
    world = devices * nodes
    if world == 1:
        return ("ddp" if trainer_cfg.strategy == "ddp" else "auto"), 1, 1, 1
    if trainer_cfg.strategy != "ddp":
        raise UsageError(f"trainer.devices/num_nodes: {world} processes need trainer.strategy: ddp")
    if device != "cpu" or nodes > 1:
        raise UsageError("trainer: DDP over several GPUs or nodes is not supported yet; use devices: 1 per GPU, "
                         "or several CPU processes on one machine (device: cpu)")
    if balance == "sampler":
        raise UsageError("data.balance: 'sampler' is not supported with DDP; use class_weights")
    if score_start:
        raise UsageError("trainer: DDP is for training from scratch or distilling, not for fine-tuning stages")
    return "ddp_fork", devices, 1, world


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
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from medlite.train.module import ClassifierModule

    start = time.perf_counter()
    if cfg.epochs == 0:
        return FitResult(best_epoch=-1, best_val_auc=None, epochs=0)
    device = resolve_device(device)
    L.seed_everything(seed, workers=True, verbose=False)
    train, val = dataset.splits["train"], dataset.splits["val"]
    as_tensor = lambda images: torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # noqa: E731
    train_images, val_images = as_tensor(train.images), as_tensor(val.images)
    class_weights = None
    if data_cfg.balance == "class_weights":
        counts = np.bincount(train.labels, minlength=dataset.num_classes).astype(np.float64)
        class_weights = torch.tensor(len(train.labels) / (dataset.num_classes * np.maximum(counts, 1)), dtype=torch.float32)

    teachers = [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    method = None
    if teachers and distill is not None:
        from medlite.distill.methods import build_method

        spec = dataset.preprocess
        torch.manual_seed(seed)  # the method's own layers (adapters, exits) start from the seed too
        method = build_method(distill, model, teachers, torch.zeros(2, spec.channels, spec.image_size, spec.image_size))
    weights = getattr(distill, "teacher_weights", None)  # an ensemble's weights (ignored for one teacher)
    bank, cache_seconds = None, 0.0
    live_teacher = method is not None and bool(method.teacher_taps())
    if (teachers and not live_teacher) or (fixed_views and not teachers):
        from medlite.distill.cache import build_teacher_bank

        cache_start = time.perf_counter()
        bank = build_teacher_bank(
            # Each view serves at least two epochs: otherwise the bank costs as much as a live teacher.
            teachers or None, train_images, views=max(1, min(teacher_views, cfg.epochs // 2)), augment_preset=data_cfg.augment,
            mean=dataset.mean, std=dataset.std, seed=seed, device=device,
        )
        bank = (bank[0].cpu(), bank[1].cpu() if bank[1] is not None else None)
        cache_seconds = time.perf_counter() - cache_start

    module = ClassifierModule(
        model, cfg,
        train_images=train_images, train_labels=torch.from_numpy(train.labels),
        val_images=val_images, val_labels=torch.from_numpy(val.labels),
        mean=dataset.mean, std=dataset.std, augment_preset=data_cfg.augment,
        class_weights=class_weights, teachers=teachers if method is not None else None, method=method,
        teacher_weights=weights if weights and len(weights) == len(teachers) else None, teacher_bank=bank, seed=seed,
    )
    strategy, devices, num_nodes, world = _placement(trainer_cfg, device, data_cfg.balance, score_start)
    if world > 1:
        from medlite.train.distributed import ShareResult, index_data

        data = index_data(len(train), len(val), train.labels, cfg.batch_size, data_cfg.balance, seed, _loaders)
        callbacks = (*callbacks, ShareResult(log_dir))
    else:
        train_loader, val_loader = _loaders(len(train), len(val), train.labels, cfg.batch_size, data_cfg.balance, seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    extra = [RichProgressBar(leave=False)] if progress else []
    precision = "32-true"
    if trainer_cfg is not None and trainer_cfg.precision != "auto":
        precision = trainer_cfg.precision
    elif device == "cuda":
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        use_distributed_sampler=False,  # our index-batch loaders shard themselves (see _loaders)
        precision=precision,
        logger=[CSVLogger(str(log_dir), name="", version=""), TensorBoardLogger(str(log_dir), name="", version="")],
        callbacks=[_epoch_callback(label, None if progress else say), LearningRateMonitor("epoch"), *extra, *callbacks],
        enable_checkpointing=False,  # the best weights are kept in memory and saved as safetensors by the caller
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if len(val) else 0,
        log_every_n_steps=1,
        deterministic=False,
        default_root_dir=str(log_dir),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging intervals does not apply here
        if world > 1:
            trainer.fit(module, datamodule=data)
            ShareResult.load(log_dir, module)  # the ranks trained in child processes: take rank 0's results
        else:
            if score_start and select_best and len(val):
                trainer.validate(module, val_loader, verbose=False)
            trainer.fit(module, train_loader, val_loader if len(val) else None)
    if select_best:
        module.restore_best()
    model.cpu().eval()
    epoch_seconds = [row["seconds"] for row in module.history]
    best_auc = module.best_score[0] if module.best_score else None
    if not select_best:
        last = module.history[-1] if module.history else {}
        module.best_epoch, best_auc = cfg.epochs - 1, last.get("val_auc")
    selected_by, notes = "val_auc", []
    if module.best_score is None:  # no validation split: the last epoch
        module.best_epoch = cfg.epochs - 1
        selected_by = "last_epoch"
        if select_best:
            notes.append("no validation split: kept the last epoch")
    elif not select_best:
        selected_by = "last_epoch"
    if best_auc is not None and not np.isfinite(best_auc):
        best_auc = None
    if module.auc_missing and select_best and module.best_score is not None:
        if best_auc is None:
            selected_by = "val_loss"
        notes.append(
            f"validation AUC could not be computed in {module.auc_missing} of {module.val_passes} "
            "validation passes (one class in the validation split?)"
            + ("; best epoch chosen by validation loss" if best_auc is None else "; those epochs ranked by loss, below the rest")
        )
    return FitResult(
        selected_by=selected_by,
        warnings=notes,
        best_epoch=module.best_epoch,
        best_val_auc=float(best_auc) if best_auc is not None else None,
        epochs=cfg.epochs,
        epoch_seconds=epoch_seconds,
        seconds=time.perf_counter() - start,
        teacher_cache_seconds=cache_seconds,
        history=module.history,
    )
