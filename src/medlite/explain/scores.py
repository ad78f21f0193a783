"""How good a map is (faithfulness) and how alike two maps are (agreement).

Faithfulness: deletion and insertion curves (Petsiuk et al., "RISE", BMVC 2018). Pixels are
removed (set to the dataset mean) or revealed (from a blurred copy) in the order the map ranks
them, and the deployed file's probability of the target class is read after each step. The
area under the deletion curve is low when the map found what the model uses; the insertion
area is high. A random ranking gives the reference both should beat.

Agreement: Spearman rank correlation of two maps over all pixels, and the IoU of their top
`fraction` pixels: "do two models look at the same place?".
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _ranking(saliency: np.ndarray) -> np.ndarray:
    """Pixel indices, most important first (stable: ties keep raster order)."""
    return np.argsort(-saliency.ravel(), kind="stable")


def blurred(images: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """A heavily blurred copy (the insertion start): shapes gone, overall intensity kept."""
    from scipy.ndimage import gaussian_filter

    h = images.shape[-2]
    sigma = sigma if sigma is not None else max(1.0, h / 8)
    return gaussian_filter(images, sigma=(0, 0, sigma, sigma), mode="nearest").astype(np.float32)


def deletion_insertion(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    maps: np.ndarray,
    targets: np.ndarray,
    steps: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(deletion AUC, insertion AUC) per image, each the mean target probability over `steps` + 1
    evenly spaced fractions of pixels removed / revealed (trapezoid rule on [0, 1])."""
    n, c, h, w = images.shape
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * h * w).astype(int)
    start = blurred(images)
    deletion, insertion = np.zeros(n), np.zeros(n)
    for i in range(n):
        order = _ranking(maps[i])
        removed = np.repeat(images[i : i + 1], steps + 1, axis=0).reshape(steps + 1, c, h * w)
        revealed = np.repeat(start[i : i + 1], steps + 1, axis=0).reshape(steps + 1, c, h * w)
        original = images[i].reshape(c, h * w)
        for k, count in enumerate(counts):
            idx = order[:count]
            removed[k][:, idx] = 0.0
            revealed[k][:, idx] = original[:, idx]
        batch = np.concatenate([removed, revealed]).reshape(2 * (steps + 1), c, h, w)
        probs = predict(batch)[:, targets[i]]
        deletion[i] = np.trapezoid(probs[: steps + 1], fractions)
        insertion[i] = np.trapezoid(probs[steps + 1 :], fractions)
    return deletion, insertion


def random_maps(shape: tuple, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps over all pixels (NaN when either map is constant)."""
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top_region(saliency: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the `fraction` highest-ranked pixels."""
    k = max(1, int(round(fraction * saliency.size)))
    mask = np.zeros(saliency.size, bool)
    mask[_ranking(saliency)[:k]] = True
    return mask.reshape(saliency.shape)


def top_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> float:
    """IoU of the two maps' top-`fraction` regions (1: the same pixels; chance is about f / (2 - f))."""
    ra, rb = top_region(a, fraction), top_region(b, fraction)
    return float((ra & rb).sum() / (ra | rb).sum())


def agreement(maps_a: np.ndarray, maps_b: np.ndarray, fraction: float = 0.2) -> dict:
    """Mean (and per-image) Spearman and top-region IoU between two stacks of maps of the same images."""
    rho = np.array([spearman(a, b) for a, b in zip(maps_a, maps_b)])
    iou = np.array([top_iou(a, b, fraction) for a, b in zip(maps_a, maps_b)])
    return {
        "spearman": _mean(rho),
        "iou_top": _mean(iou),
        "top_fraction": fraction,
        "per_image": {"spearman": [_clean(x) for x in rho], "iou_top": [round(float(x), 4) for x in iou]},
    }


def _clean(x: float) -> float | None:
    return None if x != x else round(float(x), 4)


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return round(float(values.mean()), 4) if len(values) else None
