"""NumPy arrays as shipped by many medical KD papers: X_train.npy, y_train.npy, X_val.npy, ..."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.errors import DataError


def _as_uint8_images(array: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W), uint8 or float in [0,1] / [0,255] -> uint8 NHWC."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{path}: expected images of shape (N,H,W[,C]), got {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[3] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.shape[3] not in (1, 3):
        raise DataError(f"{path}: images must have 1 or 3 channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        scale = 255.0 if array.max() <= 1.0 + 1e-6 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    return array


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels, or one-hot rows -> integer labels."""
    if array.ndim == 2 and array.shape[1] > 1:
        if not np.all((array == 0) | (array == 1)) or not np.all(array.sum(axis=1) == 1):
            raise DataError(f"{path}: 2-D labels must be one-hot (one 1 per row)")
        return array.argmax(axis=1).astype(np.int64)
    flat = array.reshape(len(array))
    if not np.allclose(flat, np.round(flat)):
        raise DataError(f"{path}: labels must be integers or one-hot")
    return flat.astype(np.int64)


def read_arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (X, y), and 'val'/'test' where present}; X_train/y_train are required."""
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
        try:
            images, labels = np.load(x_path, allow_pickle=False), np.load(y_path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{x_path.parent}: cannot read {split} arrays ({err})") from None
        images, labels = _as_uint8_images(images, x_path), _as_labels(labels, y_path)
        if len(images) != len(labels):
            raise DataError(f"{y_path}: {len(labels)} labels for {len(images)} images")
        splits[split] = (images, labels)
    return splits
