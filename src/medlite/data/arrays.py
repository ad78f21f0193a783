"""NumPy arrays as shipped by many medical KD papers: X_train.npy, y_train.npy, X_val.npy, ...

Arrays come from someone else's preprocessing, so they are checked before anything trains on
them: finite pixels within [0, 1] or [0, 255], integer labels 0..K-1 with every class present,
one label per image. A fault is a DataError naming the file and what is wrong; nothing is
clipped, cast or renumbered behind the user's back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from medlite.data.config import DataConfig
from medlite.data.dataset import MULTICLASS, MULTILABEL, Part, Source, rename_classes
from medlite.data.paths import resolve_dir
from medlite.data.registry import register_source
from medlite.errors import DataError


def _as_uint8_images(array: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W), uint8 or numbers in [0,1] / [0,255] -> uint8 NHWC."""
    if array.dtype.kind not in "buif":
        raise DataError(f"{path}: images must be numbers, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{path}: expected images of shape (N,H,W[,C]), got {array.shape}")
    if len(array) == 0:
        raise DataError(f"{path}: no images (shape {array.shape})")
    if array.shape[1] in (1, 3) and array.shape[3] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.shape[3] not in (1, 3):
        raise DataError(f"{path}: images must have 1 or 3 channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))
            kinds = " and ".join(k for k, has in (("NaN", np.isnan(array).any()), ("infinite", np.isinf(array).any())) if has)
            raise DataError(
                f"{path}: {int((~finite).sum())} {kinds} pixel value(s) in {len(bad)} of {len(array)} images "
                f"(first: image {bad[0]})"
            )
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            # Standardised (mean 0) or 16-bit images: clipping them to 0..255 would train on garbage.
            raise DataError(
                f"{path}: pixel values must lie in [0, 1] or [0, 255], found {low:g}..{high:g} "
                "(save the images before normalisation, or as uint8)"
            )
        scale = 255.0 if high <= 1.0 + 1e-6 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    return array


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels, or one-hot rows -> integer labels (not yet checked against the classes)."""
    if array.dtype.kind not in "buif":
        raise DataError(f"{path}: labels must be integers or one-hot rows, got dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > 2:
        raise DataError(f"{path}: labels must have shape (N,) or (N, classes), got {array.shape}")
    if array.ndim == 2 and array.shape[1] > 1:
        if not np.all((array == 0) | (array == 1)) or not np.all(array.sum(axis=1) == 1):
            raise DataError(f"{path}: 2-D labels must be one-hot (one 1 per row; multi-hot rows: set data.multilabel: true)")
        return array.argmax(axis=1).astype(np.int64)
    flat = array.reshape(len(array))
    if flat.dtype.kind == "f":
        if not np.isfinite(flat).all():
            raise DataError(f"{path}: {int((~np.isfinite(flat)).sum())} labels are NaN or infinite")
        if not np.array_equal(flat, np.round(flat)):
            raise DataError(f"{path}: labels must be whole numbers, found {flat[flat != np.round(flat)][0]:g}")
    return flat.astype(np.int64)


def _as_multi_hot(array: np.ndarray, path: Path) -> np.ndarray:
    """(N, K) rows of 0/1 (several findings per image) -> uint8; nothing else is accepted."""
    if array.dtype.kind not in "buif":
        raise DataError(f"{path}: multi-hot labels must be numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DataError(f"{path}: multi-hot labels (data.multilabel: true) must have shape (N, labels), got {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise DataError(f"{path}: multi-hot labels must be 0 or 1, found {array[~np.isin(array, (0, 1))][0].item()!r}")
    return array.astype(np.uint8)


def check_multi_hot(splits: dict[str, tuple[np.ndarray, np.ndarray]], root: Path, label_names: list[str] | None) -> int:
    """The number of labels K: every split's y has K columns (K = len(data.label_names) when given)."""
    width = len(label_names) if label_names else splits["train"][1].shape[1]
    source = "data.label_names" if label_names else "y_train.npy"
    for split, (_, labels) in splits.items():
        if labels.shape[1] != width:
            raise DataError(f"{root / f'y_{split}.npy'}: multi-hot labels have {labels.shape[1]} columns, {source} {width}")
    return width


def check_labels(splits: dict[str, tuple[np.ndarray, np.ndarray]], root: Path) -> int:
    """The number of classes K: labels must run 0..K-1, each class in train, none unseen by train."""
    files = {split: root / f"y_{split}.npy" for split in splits}
    for split, (_, labels) in splits.items():
        if len(labels) and labels.min() < 0:
            raise DataError(f"{files[split]}: negative label {int(labels.min())} (labels must be 0, 1, ..., K-1)")
    train = set(np.unique(splits["train"][1]).tolist())
    k = int(max(int(y.max()) for _, y in splits.values() if len(y)) + 1)
    missing = sorted(set(range(k)) - set().union(*(np.unique(y).tolist() for _, y in splits.values())))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        numbered = " (labels seem to be numbered from 1; use 0, 1, ..., K-1)" if missing == [0] else ""
        raise DataError(f"{files['train']}: no image has label {shown} of 0..{k - 1}{numbered}")
    for split, (_, labels) in splits.items():
        unseen = sorted(set(np.unique(labels).tolist()) - train)
        if unseen:
            raise DataError(
                f"{files[split]}: label {unseen[0]} never occurs in {files['train'].name}: "
                f"labels out of range of the training classes {sorted(train)}"
            )
    return k


def read_arrays(root: Path, multilabel: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (X, y), and 'val'/'test' where present}; X_train/y_train are required. With
    `multilabel` y holds (N, K) multi-hot rows (checked by `check_multi_hot`, not `check_labels`)."""
    if not root.is_dir():
        raise DataError(f"{root}: arrays folder not found")
    splits = {}
    for split in ("train", "val", "test"):
        x_path, y_path = root / f"X_{split}.npy", root / f"y_{split}.npy"
        if not x_path.exists() and not y_path.exists():
            if split == "train":
                raise DataError(f"{x_path}: not found (expected X_train.npy and y_train.npy)")
            continue
        for path in (x_path, y_path):
            if not path.exists():
                raise DataError(f"{path}: not found")
        loaded = []
        for path in (x_path, y_path):
            try:
                loaded.append(np.load(path, allow_pickle=False))
            except (OSError, ValueError, EOFError) as err:
                raise DataError(f"{path}: not a readable .npy array ({' '.join(str(err).split())[:120]})") from None
            if not isinstance(loaded[-1], np.ndarray):  # an .npz renamed .npy
                raise DataError(f"{path}: not a single .npy array")
        images, labels = loaded
        if labels.ndim >= 1 and images.ndim >= 1 and len(images) != len(labels):
            raise DataError(f"{y_path}: {len(labels)} labels for {len(images)} images in {x_path.name}")
        images = _as_uint8_images(images, x_path)
        labels = _as_multi_hot(labels, y_path) if multilabel else _as_labels(labels, y_path)
        splits[split] = (images, labels)
    if not multilabel:
        check_labels(splits, root)
    return splits


class ArraysData(DataConfig):
    """NumPy arrays: X_train.npy / y_train.npy (and _val, _test where present) in one folder."""

    source: Literal["arrays"] = "arrays"
    root: str | None = Field(None, description="directory of the .npy files")
    class_map: dict[str, str] | None = Field(None, description="rename classes (label number -> class name)")
    multilabel: bool = Field(False, description="y holds (N, K) multi-hot rows: several findings per image")
    label_names: list[str] | None = Field(
        None, min_length=1, description="with multilabel: the names of y's K columns, in order (y must have K columns)"
    )

    @model_validator(mode="after")
    def _names_need_multilabel(self) -> "ArraysData":
        if self.label_names is not None and not self.multilabel:
            raise ValueError("label_names names the columns of multi-hot labels: set multilabel: true too")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError("label_names: every name once")
        return self


def load(cfg: ArraysData, data_root: Path) -> Source:
    root = resolve_dir(cfg.root, data_root, "data.root")
    raw = read_arrays(root, multilabel=cfg.multilabel)
    if cfg.multilabel:
        n_classes = check_multi_hot(raw, root, cfg.label_names)
    else:
        n_classes = check_labels(raw, root)
    names = list(cfg.label_names) if cfg.label_names else [str(i) for i in range(n_classes)]
    class_names = rename_classes(names, cfg.class_map, str(root), "label", "labels: ")
    parts = {
        split: Part(labels, np.array([f"X_{split}.npy[{i}]" for i in range(len(labels))], dtype=object), images=images)
        for split, (images, labels) in raw.items()
    }
    return Source(
        name=root.name,
        origin=str(root),
        class_names=class_names,
        parts=parts,
        native_channels=raw["train"][0].shape[3],
        native_size=raw["train"][0].shape[1],
        task=MULTILABEL if cfg.multilabel else MULTICLASS,
    )


register_source("arrays", ArraysData, load)
