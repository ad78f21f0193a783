"""Datasets: MedMNIST files, image folders and NumPy arrays, loaded into memory as uint8 arrays.

Everything downstream sees one `Dataset`: class names and train/val/test splits of
uint8 (N, H, W, C) images already resized to the model's input size and converted
to its channel count. Normalisation and augmentation happen later, per batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlite.data.preprocess import PreprocessSpec, match_channels, resize_batch
from medlite.data.splits import stratified_split, stratified_subset
from medlite.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    source: str
    origin: str
    class_names: list[str]
    splits: dict[str, Split]
    native_channels: int
    native_size: int
    mean: float
    std: float
    split_origin: str  # "official", "folders" or "seeded stratified (70/10/20)"
    skipped: list[str] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.splits["train"].images.shape[3]

    @property
    def image_size(self) -> int:
        return self.splits["train"].images.shape[1]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec(self.image_size, self.channels, self.mean, self.std, tuple(self.class_names))

    def fingerprint(self) -> str:
        """Content hash of every image and label: resume reruns training when the data changes.

        Computed once (every stage key includes it); the splits are not modified after loading.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(repr((self.class_names, self.mean, self.std)).encode())
            for split in SPLITS:
                digest.update(self.splits[split].images.tobytes())
                digest.update(self.splits[split].labels.tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def summary(self) -> dict:
        counts = {
            split: {name: int((s.labels == i).sum()) for i, name in enumerate(self.class_names)}
            for split, s in self.splits.items()
        }
        return {
            "name": self.name,
            "source": self.source,
            "origin": self.origin,
            "classes": self.class_names,
            "num_classes": self.num_classes,
            "split": self.split_origin,
            "images": {split: len(s) for split, s in self.splits.items()},
            "per_class": counts,
            "native_size": self.native_size,
            "native_channels": self.native_channels,
            "image_size": self.image_size,
            "channels": self.channels,
            "skipped_images": len(self.skipped),
            "fingerprint": self.fingerprint(),
        }


def _resolve_folder(root: str | None, data_root: Path, key: str) -> Path:
    """data.root: absolute, else relative to the working directory, the data root, or its folders/."""
    if not root:
        raise DataError(f"{key}: required for this data source (a folder path)")
    path = Path(root).expanduser()
    candidates = [path] if path.is_absolute() else [path, data_root / path, data_root / "folders" / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(f"{key}: folder {root!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _finish(
    raw: dict[str, tuple[np.ndarray, np.ndarray]], cfg, class_names: list[str], seed: int
) -> tuple[dict[str, Split], str]:
    """Fill missing val/test splits by a seeded stratified split of train; apply data.limit."""
    split_origin = "official"
    if "val" not in raw or "test" not in raw:
        images, labels = raw["train"]
        want = {"train": cfg.split.train}
        if "val" not in raw:
            want["val"] = cfg.split.val
        if "test" not in raw:
            want["test"] = cfg.split.test
        total = sum(want.values())
        parts = stratified_split(labels, {k: v / total for k, v in want.items()}, seed)
        for name, idx in parts.items():
            raw[name] = (images[idx], labels[idx])
        split_origin = "seeded stratified " + "/".join(f"{int(round(v * 100))}" for v in want.values())
    splits = {}
    for name in SPLITS:
        images, labels = raw[name]
        if cfg.limit is not None and len(labels) > cfg.limit:
            idx = stratified_subset(labels, cfg.limit, seed)
            images, labels = images[idx], labels[idx]
        splits[name] = Split(images, labels)
    _check(splits, class_names)
    return splits, split_origin


def _check(splits: dict[str, Split], class_names: list[str]) -> None:
    if len(class_names) < 2:
        raise DataError(f"data: need at least 2 classes, found {len(class_names)} ({', '.join(class_names) or 'none'})")
    for name in ("train", "test"):
        if len(splits[name]) == 0:
            raise DataError(f"data: the {name} split is empty")
    for name, split in splits.items():  # a label outside the classes would train a phantom class
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(class_names)):
            bad = split.labels[(split.labels < 0) | (split.labels >= len(class_names))][0]
            raise DataError(f"data: label {int(bad)} in the {name} split is outside the {len(class_names)} classes 0..{len(class_names) - 1}")
    present = np.unique(splits["train"].labels)
    if len(present) < 2:
        raise DataError(f"data: the train split has only one class ({class_names[present[0]]})")


def load_dataset(cfg, data_root: Path, seed: int) -> Dataset:
    """Load the data a recipe's `data` section describes (a `DataConfig`)."""
    if cfg.source == "medmnist":
        from medlite.data import medmnist

        info = medmnist.flag_info(cfg.flag)
        path = medmnist.locate(cfg.flag, cfg.size, data_root)
        raw = medmnist.read_npz(path)
        class_names = [info["label"][str(i)] for i in range(len(info["label"]))]
        unknown = sorted(set(cfg.class_map or {}) - set(class_names))
        if unknown:
            raise DataError(f"data.class_map: {unknown[0]!r} is not a class of {cfg.flag} ({', '.join(class_names)})")
        if cfg.class_map:
            class_names = [cfg.class_map.get(n, n) for n in class_names]
        native_channels, native_size = raw["train"][0].shape[3], raw["train"][0].shape[1]
        name, origin = cfg.flag if cfg.size == 28 else f"{cfg.flag}_{cfg.size}", str(path)
        skipped: list[str] = []
    elif cfg.source == "folder":
        from medlite.data import folder

        root = _resolve_folder(cfg.root, data_root, "data.root")
        files, presplit = folder.scan(root, cfg.class_map)
        every = [entry for entries in files.values() for entry in entries]
        if not every:
            raise DataError(f"{root}: no images found (expected {root}/<class>/*.png or {root}/train/<class>/...)")
        class_names = sorted({name for _, name in every})
        native_channels, native_size = folder.native_channels(every), folder.native_size(every)
        channels, size = cfg.channels or native_channels, cfg.image_size or native_size
        raw, skipped = {}, []
        for split, entries in files.items():
            images, labels, bad = folder.read_images(entries, class_names, channels, size, cfg.skip_bad)
            skipped += [str(p) for p in bad]
            raw["train" if split == "all" else split] = (images, labels)
        name, origin = root.name, str(root)
    elif cfg.source == "arrays":
        from medlite.data.arrays import check_labels, read_arrays

        root = _resolve_folder(cfg.root, data_root, "data.root")
        raw = read_arrays(root)
        n_classes = check_labels(raw, root)
        class_names = [str(i) for i in range(n_classes)]
        unknown = sorted(set(cfg.class_map or {}) - set(class_names))
        if unknown:
            raise DataError(f"data.class_map: {unknown[0]!r} is not a label of {root} (labels: {', '.join(class_names)})")
        if cfg.class_map:
            class_names = [cfg.class_map.get(n, n) for n in class_names]
        native_channels, native_size = raw["train"][0].shape[3], raw["train"][0].shape[1]
        name, origin, skipped = root.name, str(root), []
    else:  # pragma: no cover - the schema rejects other sources
        raise DataError(f"data.source: unknown source {cfg.source!r}")

    channels = cfg.channels or native_channels
    size = cfg.image_size or native_size
    raw = {k: (match_channels(resize_batch(x, size), channels), y) for k, (x, y) in raw.items()}
    splits, split_origin = _finish(raw, cfg, class_names, seed)
    if cfg.source == "folder" and "all" not in files:
        split_origin = "folders"
    return Dataset(
        name=name,
        source=cfg.source,
        origin=origin,
        class_names=class_names,
        splits=splits,
        native_channels=int(native_channels),
        native_size=int(native_size),
        mean=cfg.mean,
        std=cfg.std,
        split_origin=split_origin,
        skipped=skipped,
    )
