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

