"""Seeded, stratified splits and subsets."""

from __future__ import annotations

import numpy as np


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



def kfold_part(labels: np.ndarray, k: int, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, fold) indices of fold `index` of a seeded stratified k-fold (scikit-learn's StratifiedKFold)."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    from medlite.errors import DataError

    counts = np.bincount(labels)
    if counts[counts > 0].min() < k:
        raise DataError(f"data.fold.k: {k} folds need at least {k} images of every class (smallest class has {counts[counts > 0].min()})")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rest, fold = list(folds.split(np.zeros(len(labels)), labels))[index]
    return np.sort(rest), np.sort(fold)
