"""Datasets: every registered source (MedMNIST files, image folders, NumPy arrays, label tables),
loaded into memory as uint8 arrays.

Everything downstream sees one `Dataset`: class names and train/val/test splits of uint8
(N, H, W, C) images already resized to the model's input size and converted to its channel
count, with each image's id, group and fold. Normalisation and augmentation happen later, per
batch. A source only reads its data (`medlite.data.registry`); splitting, k-folds, group
checks, `data.limit` and the label checks are shared, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from medlite.data.dataset import SPLITS, Dataset, Part, Source, Split, unreadable_reason
from medlite.data.preprocess import load_image, match_channels, resize_batch
from medlite.data.registry import known_sources, register_source, source_spec
from medlite.data.splits import (
    crossing_groups,
    grouped_split,
    kfold_assign,
    splits_csv_text,
    strata,
    stratified_split,
    stratified_subset,
)
from medlite.errors import DataError
from medlite.runstate import write_atomic
from medlite.task import refuse_untrainable, task_of

if TYPE_CHECKING:  # the recipe section's model (pydantic): this package is imported by the runtime on devices
    from medlite.data.config import DataConfig

__all__ = [
    "SPLITS", "Dataset", "Part", "Source", "Split", "known_sources", "load_dataset",
    "register_source", "source_spec", "write_splits_csv",
]


def load_dataset(cfg: DataConfig, data_root: Path, seed: int, *, multilabel: bool = False) -> Dataset:
    """Load the data a recipe's `data` section describes.

    Multi-label data (0/1 columns or a separated label column of a table, a multi-label MedMNIST
    flag, multi-hot arrays) is loaded for the pipeline only where `medlite.task.refuse_untrainable`
    lets it through (`MULTILABEL_TRAINING`); `multilabel=True` (`medlite data`, `--verify`) loads
    it regardless.
    """
    spec = source_spec(cfg.source)
    if not multilabel and cfg.declared_task() is not None:  # refused before reading (or downloading) anything
        refuse_untrainable(cfg.declared_task(), f"data ({cfg.source}): {getattr(cfg, 'flag', None) or cfg.source!r} is multi-label data")
    source = spec.load(cfg, data_root)
    if not multilabel:
        shown = ", ".join(source.class_names[:4]) + (", ..." if len(source.class_names) > 4 else "")
        refuse_untrainable(source.task, f"{source.origin}: multi-label data ({len(source.class_names)} labels: {shown})")
    channels = cfg.channels or source.native_channels
    size = cfg.image_size or source.native_size
    parts = {}
    for name, part in source.parts.items():
        if part.images is not None:
            part.images = match_channels(resize_batch(part.images, size), channels)
        parts[name] = part
    parts, split_origin, warnings = _split(parts, source, cfg, seed)
    splits = {}
    for name in SPLITS:
        part = parts[name]
        if cfg.limit is not None and len(part) > cfg.limit:
            part = part.take(stratified_subset(strata(part.labels), cfg.limit, seed))
        splits[name] = _materialise(part, size, channels, source)
    _check(splits, source.class_names, multilabel=task_of(source).multilabel)
    if not multilabel and not task_of(source).multilabel:  # for training: every class must be learnable
        _check_every_class_trains(splits["train"], source.class_names, cfg.limit)
    return Dataset(
        name=source.name,
        source=cfg.source,
        origin=source.origin,
        class_names=source.class_names,
        splits=splits,
        native_channels=int(source.native_channels),
        native_size=int(source.native_size),
        mean=cfg.mean,
        std=cfg.std,
        split_origin=split_origin,
        skipped=source.skipped,
        task=source.task,
        warnings=warnings + _skip_warning(source),
        group_column=source.group_column,
        skip_reasons=source.skip_reasons,
        listing=source.listing,
    )


SKIPPED_MARK = "unreadable images skipped (data.skip_bad)"  # `medlite data --verify` says it in its own check


def _skip_warning(source: Source) -> list[str]:
    """data.skip_bad left images out: said with the data (the table, the report), the list in results.json."""
    if not source.skipped:
        return []
    first = source.skipped[0]
    return [f"{len(source.skipped)} {SKIPPED_MARK}, e.g. {first} "
            f"({source.skip_reasons.get(first, 'unreadable')}); every file and reason in results.json dataset.skipped"]


def _split(parts: dict[str, Part], source: Source, cfg: DataConfig, seed: int) -> tuple[dict[str, Part], str, list[str]]:
    """Check given splits for group leakage, then apply data.fold or fill missing val/test splits."""
    grouped = all(part.groups is not None for part in parts.values())
    by = f" by {source.group_column or 'group'}" if grouped else ""
    warnings = list(source.warnings)
    if grouped and len(parts) > 1:
        crossing = crossing_groups({name: parts[name].groups for name in SPLITS if name in parts})
        if crossing:
            example = min(crossing)
            text = (
                f"{source.origin}: {len(crossing)} groups ({source.group_column or 'group'}) are in more than one split "
                f"(e.g. {example!r} in {' and '.join(crossing[example])})"
            )
            if not cfg.allow_group_leakage:
                raise DataError(f"{text}; fix the split, or set data.allow_group_leakage: true to accept it")
            warnings.append(f"{text}: accepted by data.allow_group_leakage, test figures may be optimistic")
    if cfg.fold is not None:
        out, origin = _apply_fold(parts, cfg, grouped, by)
        return out, origin, warnings
    split_origin = source.given_split or "official"
    if "val" not in parts or "test" not in parts:
        train = parts["train"]
        want = {"train": cfg.split.train}
        if "val" not in parts:
            want["val"] = cfg.split.val
        if "test" not in parts:
            want["test"] = cfg.split.test
        total = sum(want.values())
        ratios = {k: v / total for k, v in want.items()}
        if grouped:
            index = grouped_split(train.labels, train.groups, ratios, seed)
        else:
            index = stratified_split(strata(train.labels), ratios, seed)
        for name, idx in index.items():
            parts[name] = train.take(idx)
        filled = "seeded stratified " + "/".join(f"{int(round(v * 100))}" for v in want.values())
        split_origin = source.given_split or (filled + (f"{by} (each group in one split)" if grouped else ""))
    return parts, split_origin, warnings


def _apply_fold(parts: dict[str, Part], cfg: DataConfig, grouped: bool, by: str) -> tuple[dict[str, Part], str]:
    """Cross-validation fold `cfg.fold.index` of `cfg.fold.k`, seeded by `cfg.fold.seed` (not the recipe
    seed: every trial of a study sees the same partition, so comparisons stay paired).

    With a test split the folds cover train+val (the fold is validation, the test split is held
    out); without one (a flat folder) they cover every image and the fold is the test part, the
    rest being split into train/val by the `data.split` ratios. With groups, whole groups.
    """
    fold = cfg.fold
    pooled = Part.concat([parts[name] for name in ("train", "val") if name in parts])
    pooled.folds = kfold_assign(pooled.labels, fold.k, fold.seed, pooled.groups if grouped else None)
    rest, part = np.flatnonzero(pooled.folds != fold.index), np.flatnonzero(pooled.folds == fold.index)
    where = f"fold {fold.index + 1}/{fold.k} (stratified{by}, seed {fold.seed})"
    if "test" in parts:
        test = parts["test"]
        test.folds = np.full(len(test), -1, np.int64)
        out = {"train": pooled.take(rest), "val": pooled.take(part), "test": test}
        return out, f"k-fold over train+val, {where} as validation; test split held out"
    val_share = cfg.split.val / (cfg.split.train + cfg.split.val)
    inner_ratios = {"train": 1 - val_share, "val": val_share}
    others = pooled.take(rest)
    if grouped:
        inner = grouped_split(others.labels, others.groups, inner_ratios, fold.seed)
    else:
        inner = stratified_split(strata(others.labels), inner_ratios, fold.seed)
    out = {"train": others.take(inner["train"]), "val": others.take(inner["val"]), "test": pooled.take(part)}
    return out, f"k-fold over all images, {where} as test; train/val split of the rest"


def _materialise(part: Part, size: int, channels: int, source: Source) -> Split:
    """The split's images: already decoded, or read now from the part's files (only those kept)."""
    if part.images is not None:
        return Split(part.images, part.labels, part.ids, part.groups, part.folds)
    images, keep = [], []
    for i, path in enumerate(part.files or []):
        try:
            images.append(load_image(path, channels, size))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            if not source.skip_bad:
                raise DataError(f"{path}: unreadable image ({unreadable_reason(err)}); fix or remove it, or set data.skip_bad: true") from None
            source.skipped.append(str(path))
            source.skip_reasons[str(path)] = unreadable_reason(err)
            continue
        keep.append(i)
    kept = part.take(np.asarray(keep, np.int64))
    stacked = np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)
    return Split(stacked, kept.labels, kept.ids, kept.groups, kept.folds)


def _check_every_class_trains(train: Split, class_names: list[str], limit: int | None) -> None:
    """A class with no training image cannot be learnt, yet it would be predicted (never correctly)
    and scored: refused, naming it. `medlite data` still shows such a split (its table shows the 0)."""
    counts = np.bincount(train.labels, minlength=len(class_names)) if len(train) else np.zeros(len(class_names), int)
    missing = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if not missing:
        return
    why = (f"data.limit={limit} is fewer images than the {len(class_names)} classes" if limit is not None and limit < len(class_names)
           else "after the split" + (f" and data.limit={limit}" if limit is not None else ""))
    raise DataError(f"data: class {', '.join(map(repr, missing))} has no image in the train split ({why}): "
                    "the model cannot learn it; raise data.limit, change data.split, or drop the class")


def _check(splits: dict[str, Split], class_names: list[str], multilabel: bool = False) -> None:
    """Refuse data no model can be trained on."""
    if multilabel:
        if not class_names:
            raise DataError("data: no label columns")
    elif len(class_names) < 2:
        raise DataError(f"data: need at least 2 classes, found {len(class_names)} ({', '.join(class_names) or 'none'})")
    for name in ("train", "test"):
        if len(splits[name]) == 0:
            raise DataError(f"data: the {name} split is empty")
    if multilabel:
        _check_multilabel(splits, class_names)
        return
    for name, split in splits.items():  # a label outside the classes would train a phantom class
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(class_names)):
            bad = split.labels[(split.labels < 0) | (split.labels >= len(class_names))][0]
            raise DataError(f"data: label {int(bad)} in the {name} split is outside the {len(class_names)} classes 0..{len(class_names) - 1}")
    present = np.unique(splits["train"].labels)
    if len(present) < 2:
        raise DataError(f"data: the train split has only one class ({class_names[present[0]]})")


def _check_multilabel(splits: dict[str, Split], class_names: list[str]) -> None:
    """Multi-hot (N, K) 0/1 labels, K the label names; every label positive and negative somewhere in
    train (after the split: a model cannot learn a finding it never sees, nor one it always sees).
    A label without positives in val or test is not refused: its figures there are undefined, and
    the metrics say so (`evaluate.multilabel`), as `medlite data --verify` does."""
    k = len(class_names)
    for name, split in splits.items():
        labels = split.labels
        if labels.ndim != 2 or labels.shape[1] != k:
            raise DataError(f"data: the {name} split's labels have shape {labels.shape}, not (N, {k}) multi-hot for the {k} labels")
        if len(labels) and not np.isin(labels, (0, 1)).all():
            raise DataError(f"data: the {name} split's multi-hot labels hold {labels[~np.isin(labels, (0, 1))][0].item()!r}, not 0 or 1")
    train = splits["train"].labels
    positives = train.sum(axis=0)
    never = [class_names[i] for i in np.flatnonzero(positives == 0)]
    if never:
        raise DataError(
            f"data: label {', '.join(map(repr, never))} never occurs in the train split (after the split): the model cannot "
            "learn it (drop the label, or change data.split, data.fold or data.limit)"
        )
    always = [class_names[i] for i in np.flatnonzero(positives == len(train))]
    if always:
        raise DataError(f"data: label {', '.join(map(repr, always))} is positive on every image of the train split: nothing to learn")


def write_splits_csv(dataset: Dataset, path: Path) -> Path:
    """`splits.csv`: one row per image (image, split, fold, group), so anyone can check what was
    trained and tested on. Fold and group are empty where unknown. Written atomically."""
    rows = []
    for name in SPLITS:
        split = dataset.splits[name]
        for i in range(len(split)):
            fold = "" if split.folds is None or split.folds[i] < 0 else str(int(split.folds[i]))
            group = "" if split.groups is None else str(split.groups[i])
            rows.append((str(split.ids[i]), name, fold, group))
    write_atomic(Path(path), splits_csv_text(rows))
    return Path(path)
