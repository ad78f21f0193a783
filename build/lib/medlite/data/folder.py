"""Class-named image folders: `root/<class>/*` or `root/{train,val|valid,test}/<class>/*`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medlite.data.preprocess import IMAGE_SUFFIXES, is_grey, load_image
from medlite.errors import DataError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan(root: Path, class_map: dict[str, str] | None) -> tuple[dict[str, list[tuple[Path, str]]], bool]:
    """(files per split {'all'} or {'train','val','test'}, presplit) with class names mapped."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    top = _class_dirs(root)
    split_dirs = {SPLIT_ALIASES[name.lower()]: path for name, path in top.items() if name.lower() in SPLIT_ALIASES}
    presplit = bool(split_dirs) and len(split_dirs) == len(top)
    groups = split_dirs if presplit else {"all": root}
    mapping = class_map or {}
    files: dict[str, list[tuple[Path, str]]] = {}
    classes_per_split: dict[str, set[str]] = {}
    for split, folder in groups.items():
        entries = []
        for raw_name, class_dir in _class_dirs(folder).items():
            name = mapping.get(raw_name, raw_name)
            entries += [(path, name) for path in _images_in(class_dir)]
        files[split] = entries
        classes_per_split[split] = {name for _, name in entries}
    if presplit:
        if "train" not in files:
            raise DataError(f"{root}: has {', '.join(sorted(split_dirs))} but no train folder")
        reference = classes_per_split["train"]
        for split, names in classes_per_split.items():
            if names != reference:
                missing, extra = sorted(reference - names), sorted(names - reference)
                raise DataError(
                    f"{root}: class names differ between train and {split}"
                    + (f"; missing in {split}: {', '.join(missing)}" if missing else "")
                    + (f"; only in {split}: {', '.join(extra)}" if extra else "")
                    + " (rename the folders or give data.class_map)"
                )
    return files, presplit


def read_images(
    entries: list[tuple[Path, str]], classes: list[str], channels: int, image_size: int, skip_bad: bool
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Load and convert every image; (images uint8 NHWC, labels, skipped files)."""
    index = {name: i for i, name in enumerate(classes)}
    images, labels, skipped = [], [], []
    for path, name in entries:
        try:
            images.append(load_image(path, channels, image_size))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            if not skip_bad:
                raise DataError(f"{path}: unreadable image ({type(err).__name__}); fix or remove it, or set data.skip_bad: true") from None
            skipped.append(path)
            continue
        labels.append(index[name])
    if not images:
        return np.zeros((0, image_size, image_size, channels), np.uint8), np.zeros(0, np.int64), skipped
    return np.stack(images), np.asarray(labels, np.int64), skipped


def native_channels(entries: list[tuple[Path, str]], sample: int = 200) -> int:
    """1 when the images are grey (also grey stored as RGB), else 3; looks at an evenly spaced sample."""
    step = max(1, len(entries) // sample)
    for path, _ in entries[::step]:
        try:
            with Image.open(path) as image:
                if not is_grey(image):
                    return 3
        except (OSError, ValueError, UnidentifiedImageError):
            continue
    return 1


def native_size(entries: list[tuple[Path, str]], sample: int = 50) -> int:
    """The most common longer side among a sample of images (the default model input size)."""
    sizes = []
    step = max(1, len(entries) // sample)
    for path, _ in entries[::step]:
        try:
            with Image.open(path) as image:
                sizes.append(max(image.size))
        except (OSError, ValueError, UnidentifiedImageError):
            continue
    return int(np.bincount(sizes).argmax()) if sizes else 64
