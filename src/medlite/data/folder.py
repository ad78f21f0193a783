"""Class-named image folders: `root/<class>/*` or `root/{train,val|valid,test}/<class>/*`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field, field_validator

from medlite.data.config import DataConfig
from medlite.data.dataset import Part, Source, unreadable_reason
from medlite.data.paths import resolve_dir
from medlite.data.preprocess import FolderListing, list_images, load_image
from medlite.data.registry import register_source
from medlite.data.sample import native_channels, native_size
from medlite.data.table import GroupTable, folder_groups
from medlite.errors import DataError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def scan(root: Path, class_map: dict[str, str] | None,
         listing: FolderListing | None = None) -> tuple[dict[str, list[tuple[Path, str]]], bool]:
    """(files per split {'all'} or {'train','val','test'}, presplit) with class names mapped.

    Hidden entries (`._*`, `.thumbs/`) are left out; `listing`, when given, counts them and the
    symlinked and nested files taken."""
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
            found = list_images(class_dir)
            if listing is not None:
                listing.add(found)
            entries += [(path, name) for path in found.files]
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
) -> tuple[np.ndarray, np.ndarray, list[Path], list[Path]]:
    """Load and convert every image; (images uint8 NHWC, labels, skipped {"file", "reason"}, files read)."""
    index = {name: i for i, name in enumerate(classes)}
    images, labels, skipped, kept = [], [], [], []
    for path, name in entries:
        try:
            images.append(load_image(path, channels, image_size))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            if not skip_bad:
                raise DataError(f"{path}: unreadable image ({unreadable_reason(err)}); fix or remove it, or set data.skip_bad: true") from None
            skipped.append({"file": str(path), "reason": unreadable_reason(err)})
            continue
        labels.append(index[name])
        kept.append(path)
    if not images:
        return np.zeros((0, image_size, image_size, channels), np.uint8), np.zeros(0, np.int64), skipped, kept
    return np.stack(images), np.asarray(labels, np.int64), skipped, kept


class FolderData(DataConfig):
    """Class-named image folders: root/<class>/* or root/{train,val,test}/<class>/*."""

    source: Literal["folder"] = "folder"
    root: str | None = Field(None, description="the image folder")
    class_map: dict[str, str] | None = Field(
        None, description="rename classes (folder name -> class name), e.g. to reconcile splits"
    )
    skip_bad: bool = Field(False, description="skip unreadable images (counted in the summary) instead of failing")
    groups: GroupTable | None = Field(
        None, description="table of file name -> group (patient, lesion): a path, or {table, image, group}"
    )

    @field_validator("groups", mode="before")
    @classmethod
    def _path_shorthand(cls, value):
        return {"table": value} if isinstance(value, str) else value


def load(cfg: FolderData, data_root: Path) -> Source:
    root = resolve_dir(cfg.root, data_root, "data.root")
    listing = FolderListing()
    files, presplit = scan(root, cfg.class_map, listing)
    every = [entry for entries in files.values() for entry in entries]
    if not every:
        raise DataError(f"{root}: no images found (expected {root}/<class>/*.png or {root}/train/<class>/...)")
    class_names = sorted({name for _, name in every})
    channels_native, size_native = native_channels(every), native_size(every)
    channels, size = cfg.channels or channels_native, cfg.image_size or size_native
    parts, skipped = {}, []
    for split, entries in files.items():
        images, labels, bad, kept = read_images(entries, class_names, channels, size, cfg.skip_bad)
        skipped += bad
        ids = np.array([p.relative_to(root).as_posix() for p in kept], dtype=object)
        parts["train" if split == "all" else split] = Part(labels, ids, images=images)
    if cfg.groups is not None:
        for part in parts.values():
            part.groups = folder_groups(cfg.groups, data_root, root, list(part.ids))
    return Source(
        name=root.name,
        origin=str(root),
        class_names=class_names,
        parts=parts,
        native_channels=channels_native,
        native_size=size_native,
        given_split="folders" if presplit else None,
        skipped=[s["file"] for s in skipped],
        skip_reasons={s["file"]: s["reason"] for s in skipped},
        warnings=[n for n in listing.notes(str(root)) if "hidden" in n],  # said with the run's data line
        listing={"hidden_skipped": listing.hidden, "symlinked": listing.symlinked, "nested": listing.nested},
        group_column=None if cfg.groups is None else cfg.groups.group,
    )


register_source("folder", FolderData, load)
