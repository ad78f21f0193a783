"""Seeded, stratified splits and subsets; with groups (patients, lesions) every group stays in one split."""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np

from medlite.errors import DataError


def stratified_split(labels: np.ndarray, ratios: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices per split, class by class, so every split keeps the class balance.

    Each class is shuffled with the seed and cut by the ratios; rounding leftovers go to train.
    A ratio of 0 gives an empty split.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {name: [] for name in ratios}
    names = list(ratios)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        start = 0
        counts = {name: int(round(ratios[name] * len(idx))) for name in names if name != "train"}
        # every non-empty split gets at least one image of each class when the class allows it
        for name in counts:
            if ratios[name] > 0 and counts[name] == 0 and len(idx) >= len(names):
                counts[name] = 1
        for name in names:
            if name == "train":
                continue
            out[name].append(idx[start : start + counts[name]])
            start += counts[name]
        out["train"].append(idx[start:])
    return {name: np.sort(np.concatenate(parts)) if parts else np.array([], int) for name, parts in out.items()}


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` indices, in proportion to the classes (every class keeps at least one)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    ratio = limit / len(labels)
    picked = stratified_split(labels, {"train": 1 - ratio, "keep": ratio}, seed)["keep"]
    return picked[:limit]


def strata(labels: np.ndarray) -> np.ndarray:
    """What to stratify on: the class; for multi-hot labels the first finding (K for none), a proxy
    that keeps normal and abnormal images (and the common findings) balanced across splits.

    Multi-label data cannot be stratified on every label at once. Without groups iterative
    stratification (Sechidis et al. 2011; the `iterative-stratification` package) would do better,
    but it has no grouped form, and patient-grouped splits are the ones that matter (NIH, HAM10000).
    So grouped multi-label splits and folds are scikit-learn's StratifiedGroupKFold on this proxy:
    whole groups, seeded, and a label that still ends up without training positives is refused by
    the data checks (`data._check_multilabel`) rather than trained blind. On the NIH table (20 seeds,
    70/10/20 by patient, and 4 x 5 grouped folds) no label was ever missing from train; stratifying
    on the rarest finding instead left fewer labels out of val but more out of test, no clear gain.
    """
    if labels.ndim == 1:
        return labels
    first = labels.argmax(axis=1)
    return np.where(labels.any(axis=1), first, labels.shape[1]).astype(np.int64)


def _quiet_folds(splitter, y: np.ndarray, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    # Only this warning is expected: a class smaller than k cannot be in every fold (it still is
    # where it can); anything else scikit-learn says is shown.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class in y has only", category=UserWarning)
        return list(splitter.split(np.zeros(len(y)), y, groups))


def kfold_assign(labels: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """The fold (0..k-1) of every image in a seeded stratified k-fold; with groups every group lies
    in one fold (scikit-learn's StratifiedKFold / StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # heavy (~2 s): only splitting needs it

    y = strata(labels)
    if groups is None:
        counts = np.bincount(y)
        if counts[counts > 0].min() < k:
            raise DataError(f"data.fold.k: {k} folds need at least {k} images of every class (smallest class has {counts[counts > 0].min()})")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        n_groups = len(np.unique(groups))
        if n_groups < k:
            raise DataError(f"data.fold.k: {k} folds need at least {k} groups, found {n_groups}")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of = np.full(len(y), -1, np.int64)
    for index, (_, part) in enumerate(_quiet_folds(splitter, y, groups)):
        fold_of[part] = index
    return fold_of


def kfold_part(labels: np.ndarray, k: int, index: int, seed: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rest, fold) indices of fold `index` of a seeded stratified k-fold."""
    fold_of = kfold_assign(labels, k, seed, groups)
    return np.flatnonzero(fold_of != index), np.flatnonzero(fold_of == index)


def _carve(y: np.ndarray, groups: np.ndarray, share: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): about `share` of the images in `part`, whole groups only, class balance kept
    where the groups allow: one fold of a StratifiedGroupKFold with round(1 / share) folds (for a
    share above one half, every fold but one of round(1 / (1 - share)) folds)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold  # heavy (~2 s): only splitting needs it

    if share <= 0:
        return np.arange(len(y)), np.array([], np.int64)
    big = share > 0.5
    n = max(2, int(round(1 / (1 - share if big else share))))
    n_groups = len(np.unique(groups))
    if n_groups < n:
        raise DataError(f"data.split: a {share:.0%} {what} split by group needs at least {n} groups, found {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    if np.bincount(y).max() < n:  # too few images of every class to stratify: whole groups at random
        splitter = GroupKFold(n_splits=n, shuffle=True, random_state=seed)
    rest, part = _quiet_folds(splitter, y, groups)[0]
    return (part, rest) if big else (rest, part)


def grouped_split(labels: np.ndarray, groups: np.ndarray, ratios: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices per split (the keys of `ratios`, 'train' taking the rest), every group in one split."""
    y, remaining, total = strata(labels), np.arange(len(labels)), sum(ratios.values())
    out: dict[str, np.ndarray] = {}
    left = 1.0
    for name, ratio in ratios.items():
        if name == "train":
            continue
        share = (ratio / total) / left if left > 0 else 0.0
        rest, part = _carve(y[remaining], groups[remaining], min(share, 1.0), seed, name)
        out[name] = np.sort(remaining[part])
        remaining = remaining[rest]
        left -= ratio / total
    out["train"] = np.sort(remaining)
    return {name: out[name] for name in ratios}


def crossing_groups(groups_by_split: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Groups found in more than one split: group -> the splits it is in."""
    where: dict[str, list[str]] = {}
    for split, groups in groups_by_split.items():
        for group in np.unique(groups):
            where.setdefault(str(group), []).append(split)
    return {group: splits for group, splits in where.items() if len(splits) > 1}


def splits_csv_text(rows: list[tuple[str, str, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "split", "fold", "group"])
    writer.writerows(rows)
    return buffer.getvalue()
