"""Classification metrics computed from real predictions (probabilities and labels).

numpy, scipy and scikit-learn. Every function takes `probs` (N x K, rows sum to 1) and
integer `labels` (N,), so the same code scores a PyTorch module during training and an
ONNX file in ONNX Runtime during evaluation.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from medlite.activations import softmax  # noqa: F401 - the one softmax, re-exported for training and tests


def auc_rows(probs: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ROC AUC of every row of resampled indices `idx` (B x n; -1 = a unit not in this row's test
    set) at once, via the Mann-Whitney U statistic on mid-ranks (scipy.stats.rankdata): binary on
    the positive class, else the macro one-vs-rest mean over the classes present in the row (as
    `auc`). NaN where a row lacks a class."""
    from scipy.stats import rankdata

    idx = np.atleast_2d(idx)
    valid = idx >= 0
    k = probs.shape[1]
    classes = [1] if k == 2 else list(range(k))
    safe = np.where(valid, idx, 0)
    per_class = []
    for c in classes:
        # Absent units go to the bottom of the ranking with neither label: a score below every real
        # one, and excluded from both class counts.
        scores = np.where(valid, probs[:, c][safe], -np.inf)
        positive = (labels[safe] == c) & valid
        negative = (labels[safe] != c) & valid
        n1 = positive.sum(axis=1).astype(float)
        n0 = negative.sum(axis=1).astype(float)
        ranks = rankdata(scores, axis=1) - (~valid).sum(axis=1, keepdims=True)  # ranks among valid units
        u = (ranks * positive).sum(axis=1) - n1 * (n1 + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class.append(np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan))
    stacked = np.vstack(per_class)
    if k == 2:
        return stacked[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row where no class has both labels: NaN
        return np.nanmean(stacked, axis=0)


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: binary on the positive class, else macro one-vs-rest over the classes present
    (absent classes have no ROC curve). NaN when fewer than two classes occur. `auc_rows` on
    the images themselves: the value scikit-learn's roc_auc_score gives."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(auc_rows(np.asarray(probs), labels, np.arange(len(labels)))[0])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017): sum_b |B|/N * |acc(B) - conf(B)|."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def bootstrap_ci(
    probs: np.ndarray, labels: np.ndarray, resamples: int, confidence: float, seed: int
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for accuracy and AUC with `scipy.stats.bootstrap` (seeded:
    the same run gives the same CI). Images are resampled jointly (paired), so both metrics see
    the same resamples. AUC is left out when a resample can lack a class (tiny splits)."""
    if resamples <= 0 or len(labels) == 0:
        return {}
    from scipy.stats import bootstrap

    predicted = probs.argmax(axis=1)
    index = np.arange(len(labels))
    common = dict(n_resamples=resamples, confidence_level=confidence, method="percentile", vectorized=False)

    def accuracy(idx: np.ndarray) -> float:
        return float((predicted[idx] == labels[idx]).mean())

    def auc_of(idx: np.ndarray) -> float:
        return auc(probs[idx], labels[idx])

    out = {}
    for name, statistic in (("accuracy", accuracy), ("auc", auc_of)):
        res = bootstrap((index,), statistic, rng=np.random.default_rng(seed), **common)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            out[name] = [lo, hi]
    return out


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    ece_bins: int = 15,
    seed: int = 0,
) -> dict:
    """The full metric set a clinician or reviewer asks for."""
    k = len(class_names)
    predicted = probs.argmax(axis=1)
    cm = skm.confusion_matrix(labels, predicted, labels=list(range(k)))
    per_class = {}
    total = cm.sum()
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = total - tp - fn - fp
        per_class[name] = {
            "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "support": int(tp + fn),
        }
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, labels=list(range(k)), average="macro", zero_division=0
    )
    return {
        "accuracy": float((predicted == labels).mean()),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)),
        "auc": auc(probs, labels),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "ece": expected_calibration_error(probs, labels, ece_bins),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ci": bootstrap_ci(probs, labels, bootstrap, confidence, seed),
        "n": int(len(labels)),
    }
