"""Multi-label metrics: several independent findings per image, one probability per label.

`probs` are (N, K) per-label probabilities (sigmoid outputs, rows need not sum to 1) and `labels`
(N, K) multi-hot 0/1. The headline figures are MedMNIST's for multi-label data (its `getAUC` /
`getACC`): the mean AUC over labels and the mean per-label accuracy at 0.5 (positive when p > 0.5).
Beside them: per-label AUC with percentile-bootstrap intervals (`metrics.auc_rows`, the
single-label code's vectorised AUC, on each label as a binary task), macro and micro average precision
(scikit-learn), and per-label sensitivity / specificity at thresholds chosen on validation by the
operating-point rule (`operating_point.choose_threshold`).

A label with no positive (or no negative) image in a split has no ROC curve there: its AUC and
AP are NaN, it is left out of the means, and `undefined` says so (never a 0 that reads as a score).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
from sklearn import metrics as skm

from medlite.errors import UsageError
from medlite.evaluate.metrics import auc_rows


def _as_arrays(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape:
        raise ValueError(f"multi-label metrics need probs and labels of one shape (N, K), got {probs.shape} and {labels.shape}")
    return probs, labels.astype(bool)


def _defined(labels: np.ndarray) -> np.ndarray:
    """(K,) bool: the labels with both a positive and a negative image."""
    positives = labels.sum(axis=0)
    return (positives > 0) & (positives < len(labels))


def per_label_auc(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K,) ROC AUC of every label as a binary task; NaN where a label lacks positives or negatives.

    `metrics.auc_rows` on [1 - p, p] per label: the value scikit-learn's roc_auc_score gives."""
    probs, labels = _as_arrays(probs, labels)
    index = np.arange(len(labels))
    out = np.full(probs.shape[1], np.nan)
    for k in np.flatnonzero(_defined(labels)):
        out[k] = auc_rows(np.column_stack([1 - probs[:, k], probs[:, k]]), labels[:, k].astype(np.int64), index)[0]
    return out


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every label undefined: NaN, said by the caller
        return float(np.nanmean(values)) if len(values) else float("nan")


def mean_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUC over the labels defined in the split (MedMNIST's multi-label AUC); NaN when none is."""
    return _nanmean(per_label_auc(probs, labels))


def mean_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-label accuracy, positive when p > 0.5 (MedMNIST's multi-label ACC)."""
    probs, labels = _as_arrays(probs, labels)
    return float(((probs > 0.5) == labels).mean()) if len(labels) else float("nan")


def average_precision(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(per-label AP, macro AP, micro AP). Macro: the mean over labels with a positive (scikit-learn's
    macro average would count a label without positives as 0); micro: every (image, label) pair as
    one binary decision, NaN when there is no positive at all."""
    probs, labels = _as_arrays(probs, labels)
    per_label = np.full(probs.shape[1], np.nan)
    has_positive = labels.any(axis=0)
    for k in np.flatnonzero(has_positive):
        per_label[k] = skm.average_precision_score(labels[:, k], probs[:, k])
    micro = float(skm.average_precision_score(labels.ravel(), probs.ravel())) if labels.any() else float("nan")
    return per_label, _nanmean(per_label), micro


def choose_thresholds(val_probs: np.ndarray, val_labels: np.ndarray, class_names: list[str],
                      rule: Any = None) -> tuple[dict[str, dict], list[str]]:
    """Per-label operating points chosen on validation: ({label: {"threshold", "rule"}}, warnings).

    `rule` is an `OperatingPoint` of the recipe (sensitivity, specificity or youden; its
    positive_class is ignored: every label gets its own threshold), default Youden's J. A label
    without both positive and negative validation images gets no threshold (None) and a warning:
    its sensitivity and specificity at an operating point are then undefined.
    """
    from medlite.evaluate.thresholds import choose_threshold

    rule = rule or SimpleNamespace(sensitivity=None, specificity=None, youden=True)
    probs, labels = _as_arrays(val_probs, val_labels)
    out: dict[str, dict] = {}
    notes: list[str] = []
    for k, name in enumerate(class_names):
        try:
            threshold, text = choose_threshold(probs[:, k], labels[:, k], rule)
        except UsageError:
            out[name] = {"threshold": None, "rule": None}
            notes.append(f"{name}: no threshold (the validation split lacks positive or negative images of it)")
            continue
        out[name] = {"threshold": float(threshold), "rule": text}
    return out, notes


def deployed_thresholds(val_probs: np.ndarray, val_labels: np.ndarray, class_names: list[str], rule: Any = None,
                        split: str = "test") -> dict:
    """The operating point a multi-label file carries: a threshold per label chosen on validation
    (`choose_thresholds`). A label validation could not give one decides at 0.5 (MedMNIST's rule),
    and its `rules` entry says so: a device needs a decision for every label, and the reader must
    see which ones were not chosen."""
    chosen, notes = choose_thresholds(val_probs, val_labels, class_names, rule)
    thresholds, rules = {}, {}
    for name in class_names:
        t = chosen[name]["threshold"]
        thresholds[name] = 0.5 if t is None else float(t)
        rules[name] = chosen[name]["rule"] or "0.5 (validation lacks positives or negatives of this label)"
    first = next((r for r in rules.values() if not r.startswith("0.5 (")), "0.5")
    return {"thresholds": thresholds, "rules": rules, "rule": f"{first}, per label", "chosen_on": "val",
            "split": split, "notes": notes}


def multilabel_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    thresholds: dict[str, dict] | None = None,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    split: str = "test",
) -> dict:
    """The multi-label metric set of one split.

    `thresholds`: `choose_thresholds(...)[0]` (chosen on validation); without them sensitivity and
    specificity are given at 0.5. `undefined` lists, in words, every figure that is NaN and why.
    """
    from medlite.evaluate.thresholds import bootstrap_sens_spec, sens_spec

    probs, labels = _as_arrays(probs, labels)
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{probs.shape[1]} probability columns for {len(class_names)} labels")
    aucs = per_label_auc(probs, labels)
    ap, ap_macro, ap_micro = average_precision(probs, labels)
    label_ci, mean_ci = bootstrap_intervals(probs, labels, bootstrap, confidence, seed)
    undefined: list[str] = []
    per_label: dict[str, dict] = {}
    for k, name in enumerate(class_names):
        y, p = labels[:, k], probs[:, k]
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            missing = "positive" if n_pos == 0 else "negative"
            undefined.append(f"{name}: no {missing} image in the {split} split (AUC{', AP' if n_pos == 0 else ''} undefined)")
        if thresholds is None:
            chosen = {"threshold": 0.5, "rule": "0.5"}
        else:  # a label the validation split could not give a threshold has none here either
            chosen = thresholds.get(name) or {"threshold": None, "rule": None}
        threshold = chosen.get("threshold")
        row: dict[str, Any] = {
            "auc": float(aucs[k]),
            "ap": float(ap[k]),
            "accuracy": float(((p > 0.5) == y).mean()) if len(y) else float("nan"),
            "positives": n_pos,
            "negatives": int(len(y) - n_pos),
            "threshold": threshold,
            "rule": chosen.get("rule"),
        }
        if threshold is None:
            row["sensitivity"] = row["specificity"] = float("nan")
            row["ci"] = {}
            undefined.append(f"{name}: no operating point (none chosen on validation)")
        else:
            decided = p >= threshold
            row["sensitivity"], row["specificity"] = sens_spec(decided, y)
            row["ci"] = bootstrap_sens_spec(decided, y, bootstrap, confidence, seed)
        row["ci"] = {**row["ci"], **label_ci[k]}
        per_label[name] = row
    if not np.isfinite(aucs).any():
        undefined.append(f"mean AUC: no label has both positive and negative images in the {split} split")
    return {
        "auc": _nanmean(aucs),  # mean over the labels defined here (MedMNIST's mean AUC)
        "accuracy": mean_accuracy(probs, labels),  # mean per-label accuracy at 0.5
        "ap_macro": ap_macro,
        "ap_micro": ap_micro,
        "labels_defined": int(np.isfinite(aucs).sum()),
        "per_label": per_label,
        "ci": mean_ci,
        "undefined": undefined,
        "n": int(len(labels)),
    }


def bootstrap_intervals(probs: np.ndarray, labels: np.ndarray, resamples: int, confidence: float,
                        seed: int) -> tuple[list[dict], dict]:
    """Percentile-bootstrap intervals: per label its AUC and accuracy at 0.5, and the mean AUC.

    Images are resampled jointly (every label sees the same resamples, so the mean AUC's interval
    keeps the labels' correlation), all resamples at once through `metrics.auc_rows` (the
    vectorised Mann-Whitney AUC the single-label code uses) on [1 - p, p] per label. As in
    `metrics.bootstrap_ci`, a label's AUC interval is left out when some resample lacks its
    positives or negatives (a rare label in a small split); the mean AUC of a resample is over the
    labels defined in it, as the point estimate is.
    """
    probs, labels = _as_arrays(probs, labels)
    k = probs.shape[1]
    if resamples <= 0 or len(labels) == 0:
        return [{} for _ in range(k)], {}
    idx = np.random.default_rng(seed).integers(0, len(labels), (resamples, len(labels)))
    tail = (1 - confidence) / 2 * 100
    cut = lambda values: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]  # noqa: E731
    per_label, rows = [], np.full((resamples, k), np.nan)
    for j in range(k):
        y = labels[:, j].astype(np.int64)
        out = {"accuracy": cut(((probs[:, j] > 0.5) == labels[:, j])[idx].mean(axis=1))}
        if _defined(labels[:, [j]])[0]:
            rows[:, j] = auc_rows(np.column_stack([1 - probs[:, j], probs[:, j]]), y, idx)
            if np.isfinite(rows[:, j]).all():
                out["auc"] = cut(rows[:, j])
        per_label.append(out)
    means = np.array([_nanmean(r) for r in rows])
    means = means[np.isfinite(means)]
    return per_label, ({"auc": cut(means)} if len(means) else {})
