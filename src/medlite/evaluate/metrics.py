"""Classification metrics computed from real predictions (probabilities and labels).

numpy + scikit-learn only. Every function takes `probs` (N x K, rows sum to 1) and
integer `labels` (N,), so the same code scores a PyTorch module during training and an
ONNX file in ONNX Runtime during evaluation.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: binary on the positive class, else macro one-vs-rest. NaN when a class is absent."""
    k = probs.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if k == 2:
        return float(skm.roc_auc_score(labels, probs[:, 1]))
    if len(present) < k:
        # One-vs-rest over the classes that occur; absent classes have no ROC curve.
        scores = [skm.roc_auc_score(labels == c, probs[:, c]) for c in present]
        return float(np.mean(scores))
    return float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


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
