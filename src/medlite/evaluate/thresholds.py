"""Decision-threshold arithmetic: choosing a threshold on validation scores by a rule, and the
sensitivity / specificity it gives (with bootstrap intervals). Plain numpy, no stage: the operating
point of a single-label file (`medlite.evaluate.operating_point`) and the per-label thresholds of a
multi-label one (`medlite.evaluate.multilabel`) both use it.
"""

from __future__ import annotations

import math

import numpy as np

from medlite.errors import UsageError


def choose_threshold(scores: np.ndarray, positive: np.ndarray, cfg) -> tuple[float, str]:
    """(threshold, rule text). `scores`: the positive class's probabilities; `positive`: bool truth.

    sensitivity s: the highest threshold with at least ceil(s * P) positives at or above it
    (the best specificity that keeps the sensitivity); specificity s: the lowest threshold with at
    least ceil(s * N) negatives below it; youden: maximises sensitivity + specificity - 1 over
    every distinct score.
    """
    pos, neg = np.sort(scores[positive])[::-1], np.sort(scores[~positive])
    if len(pos) == 0 or len(neg) == 0:
        raise UsageError("evaluate.operating_point: the validation split needs both positive and negative images")
    if cfg.sensitivity is not None:
        k = max(1, math.ceil(cfg.sensitivity * len(pos) - 1e-9))
        return float(pos[k - 1]), f"sensitivity >= {cfg.sensitivity:g} on val"
    if cfg.specificity is not None:
        m = max(1, math.ceil(cfg.specificity * len(neg) - 1e-9))
        return float(np.nextafter(neg[m - 1], np.inf)), f"specificity >= {cfg.specificity:g} on val"
    candidates = np.unique(scores)
    sens = (scores[positive][None, :] >= candidates[:, None]).mean(1)
    spec = (scores[~positive][None, :] < candidates[:, None]).mean(1)
    best = int(np.argmax(sens + spec - 1))  # ties: the lowest such threshold (first in ascending order)
    return float(candidates[best]), "youden on val"


def sens_spec(predicted_positive: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    tp = (predicted_positive & positive).sum()
    tn = (~predicted_positive & ~positive).sum()
    p, n = positive.sum(), (~positive).sum()
    return (float(tp / p) if p else float("nan")), (float(tn / n) if n else float("nan"))


def bootstrap_sens_spec(predicted_positive, positive, resamples: int, confidence: float, seed: int) -> dict:
    """Percentile-bootstrap intervals for sensitivity and specificity (seeded, resampling images)."""
    if resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    n = len(positive)
    sens, spec = [], []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        s, p = sens_spec(predicted_positive[idx], positive[idx])
        if s == s:
            sens.append(s)
        if p == p:
            spec.append(p)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    out = {}
    if sens:
        out["sensitivity"] = [round(float(np.percentile(sens, lo)), 4), round(float(np.percentile(sens, hi)), 4)]
    if spec:
        out["specificity"] = [round(float(np.percentile(spec, lo)), 4), round(float(np.percentile(spec, hi)), 4)]
    return out
