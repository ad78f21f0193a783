"""The training data as one LightningDataModule, for one process and for DDP alike.

The images stay in memory as uint8 tensors (on the training device once `setup` has run); the
loaders only draw indices (seeded samplers, sharded per rank under DDP) and the DataModule's
`on_after_batch_transfer` gathers each batch on the device: no per-image Python, no workers.
A teacher bank (fixed augmented views and the teachers' logits on them) replaces the live
augmentation of the training images when distilling a logit method, or when a scratch run must
see the very same views (`medlite.train.bank`).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from medlite.data.preprocess import resize_batch
from medlite.train.bank import build_teacher_bank

VAL_BATCH = 512  # validation is inference only: large batches, whatever the training batch size


class _Indices(Dataset):
    """Item = a list of indices (the samplers below yield whole batches): a tagged index tensor."""

    def __init__(self, n: int, split: str) -> None:
        self.n, self.split = n, split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx) -> dict[str, Any]:
        return {"split": self.split, "idx": torch.as_tensor(idx, dtype=torch.long)}


class _EpochBatches(BatchSampler):
    def set_epoch(self, epoch: int) -> None:  # Lightning calls it each epoch; the DistributedSampler reshuffles
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def index_loaders(n_train: int, n_val: int, labels: np.ndarray, batch_size: int, balance: str, seed: int,
                  world: int = 1, rank: int = 0) -> tuple[DataLoader, DataLoader]:
    """(train, val) DataLoaders of index batches.

    With `world` > 1 (DDP) each process gets its share of every epoch through a DistributedSampler
    (seeded, reshuffled each epoch) and `batch_size // world` images per step, so the global batch
    stays the recipe's; validation is sharded too (padded) and gathered whole by the module.
    """
    if world > 1:
        per_rank = max(1, batch_size // world)
        sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        share = len(sampler)
        train = DataLoader(_Indices(n_train, "train"), batch_size=None,
                           sampler=_EpochBatches(sampler, per_rank, drop_last=share % per_rank == 1))
        val_sampler = DistributedSampler(range(n_val), num_replicas=world, rank=rank, shuffle=False)
        val = DataLoader(_Indices(n_val, "val"), sampler=BatchSampler(val_sampler, VAL_BATCH, False), batch_size=None)
        return train, val
    generator = torch.Generator().manual_seed(seed)
    if balance == "sampler":
        counts = np.bincount(labels)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, n_train, replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(n_train), generator=generator)
    # A final batch of one image breaks BatchNorm: drop it only in that case.
    train = DataLoader(_Indices(n_train, "train"), batch_size=None,
                       sampler=BatchSampler(sampler, batch_size, drop_last=n_train % batch_size == 1))
    val = DataLoader(_Indices(n_val, "val"), sampler=BatchSampler(SequentialSampler(range(n_val)), VAL_BATCH, False),
                     batch_size=None)
    return train, val


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights of the loss (`data.balance: class_weights`); mean 1 over the images."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


class TrainData(L.LightningDataModule):
    """A dataset's train and val splits as Lightning batches.

    A training batch is a dict: `image` (uint8 N x C x H x W), `label`, `idx`, `fixed_view`
    (True: the image is a bank view, already augmented) and `teacher_logits` (the bank's,
    views x teachers x K per image; None without a bank of logits). A validation batch has
    `image`, `label` and `idx` (DDP keeps each image once when it gathers the padded shards).
    """

    def __init__(self, dataset, *, batch_size: int, balance: str, augment: str, seed: int,
                 input_size: int | None = None) -> None:
        super().__init__()
        train = dataset.splits["train"]
        # Validation scores the model at its own input size (a cross-resolution student's), resized as the
        # evaluation of its deployed file resizes (`resize_batch`, as `Dataset.at_size`); training images stay at
        # the data's size: the teachers see them so, and the module resizes each augmented view for the student.
        val = dataset.splits["val"]
        val_images = resize_batch(val.images, input_size) if input_size else val.images
        self.batch_size, self.balance, self.augment, self.seed = batch_size, balance, augment, seed
        self.mean, self.std = dataset.mean, dataset.std
        self.n_train, self.n_val = len(train), len(val)
        self._labels = train.labels
        self.tensors: dict[str, torch.Tensor] = {
            "train_images": _nchw(train.images), "train_labels": torch.from_numpy(train.labels),
            "val_images": _nchw(val_images), "val_labels": torch.from_numpy(val.labels),
        }
        self.bank_seconds = 0.0
        self._on_device: dict[str, torch.Tensor] = {}
        self._loaders: tuple[DataLoader, DataLoader] | None = None

    @property
    def has_bank(self) -> bool:
        return "bank_images" in self.tensors

    def build_bank(self, teachers: list[torch.nn.Module] | None, views: int, device: str,
                   teacher_sizes: list[int] | None = None) -> None:
        """Precompute `views` fixed augmented views of the training images and the teachers' logits on them.

        Called before `Trainer.fit`, not in `prepare_data`/`setup`: those run inside each DDP rank
        (after the fork), so every rank would run the teachers; built here once, the forked ranks
        share it. The teachers run on `device`; the bank is kept on the CPU until `setup`.
        """
        start = time.perf_counter()
        images, logits = build_teacher_bank(
            teachers or None, self.tensors["train_images"], views=views, augment_preset=self.augment,
            mean=self.mean, std=self.std, seed=self.seed, device=device, teacher_sizes=teacher_sizes,
        )
        self.tensors["bank_images"] = images.cpu()
        if logits is not None:
            self.tensors["bank_logits"] = logits.cpu()
        self.bank_seconds = time.perf_counter() - start

    # -- Lightning hooks ---------------------------------------------------------------
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        self._loaders = index_loaders(self.n_train, self.n_val, self._labels, self.batch_size, self.balance, self.seed,
                                      world=trainer.world_size, rank=trainer.global_rank)
        device = trainer.strategy.root_device
        self._on_device = {name: t.to(device) for name, t in self.tensors.items()}

    def teardown(self, stage: str) -> None:
        self._on_device = {}  # frees the device's copies (GPU memory) once the stage is done

    def train_dataloader(self) -> DataLoader:
        return self._loaders[0]

    def val_dataloader(self) -> DataLoader | list:
        return self._loaders[1] if self.n_val else []

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        idx, t = batch["idx"], self._on_device
        if batch["split"] == "val":
            return {"image": t["val_images"][idx], "label": t["val_labels"][idx], "idx": idx}
        out = {"label": t["train_labels"][idx], "idx": idx, "fixed_view": self.has_bank, "teacher_logits": None}
        if self.has_bank:  # each epoch draws its images from one fixed view, in turn
            view = self.trainer.current_epoch % t["bank_images"].shape[0]
            out["image"] = t["bank_images"][view][idx]
            if "bank_logits" in t:
                out["teacher_logits"] = t["bank_logits"][view][idx]
        else:
            out["image"] = t["train_images"][idx]
        return out
