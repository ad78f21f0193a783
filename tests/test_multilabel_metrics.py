"""Multi-label metrics (evaluate/multilabel.py) and the Task seam, against references computed here:
scikit-learn per column, and hand-made tiny examples."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medlite.errors import UsageError
from medlite.evaluate.multilabel import (
    average_precision,
    choose_thresholds,
    mean_accuracy,
    mean_auc,
    multilabel_metrics,
    per_label_auc,
)
from medlite.task import MULTI_LABEL_TASK, SINGLE_LABEL_TASK, task_of

NAMES = ["effusion", "mass", "hernia"]


def _random(n: int = 60, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, k)).astype(np.uint8)
    probs = np.clip(0.35 * labels + rng.uniform(0, 0.65, (n, k)), 0, 1)
    return probs, labels


def test_per_label_auc_equals_sklearn_column_by_column():
    probs, labels = _random()
    expected = [roc_auc_score(labels[:, k], probs[:, k]) for k in range(3)]
    np.testing.assert_allclose(per_label_auc(probs, labels), expected, rtol=0, atol=1e-12)
    assert mean_auc(probs, labels) == pytest.approx(np.mean(expected), abs=1e-12)


def test_hand_made_example():
    """Two labels, four images. Label 0: positives 0.9, 0.4; negatives 0.6, 0.1: of the 4 (pos, neg)
    pairs one is misordered (0.4 < 0.6): AUC 3/4. Label 1 is never positive: undefined, not 0."""
    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.5], [0.1, 0.1]])
    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    aucs = per_label_auc(probs, labels)
    assert aucs[0] == 0.75 and np.isnan(aucs[1])
    assert mean_auc(probs, labels) == 0.75  # the mean over the labels defined here
    # accuracy at 0.5: label 0 right on 0.9(1) 0.4(1: wrong) 0.6(0: wrong) 0.1(0) = 2/4; label 1: 0.7 wrong = 3/4
    assert mean_accuracy(probs, labels) == pytest.approx((2 / 4 + 3 / 4) / 2)
    # AP of label 0 by hand: ranked 0.9(+) 0.6(-) 0.4(+) 0.1(-): precision at each positive 1/1, 2/3 -> mean 5/6
    per_label, macro, micro = average_precision(probs, labels)
    assert per_label[0] == pytest.approx(5 / 6) and np.isnan(per_label[1]) and macro == pytest.approx(5 / 6)
    assert micro == pytest.approx(average_precision_score(labels.ravel(), probs.ravel()))


def test_a_probability_of_exactly_one_half_is_negative_as_in_medmnist():
    probs, labels = np.array([[0.5], [0.5]]), np.array([[0], [1]])
    assert mean_accuracy(probs, labels) == 0.5
    assert MULTI_LABEL_TASK.decisions(probs).tolist() == [[0], [0]]


def test_average_precision_macro_skips_labels_without_positives_and_micro_pools_pairs():
    probs, labels = _random(seed=3)
    labels[:, 2] = 0
    per_label, macro, micro = average_precision(probs, labels)
    expected = [average_precision_score(labels[:, k], probs[:, k]) for k in range(2)]
    np.testing.assert_allclose(per_label[:2], expected, atol=1e-12)
    assert np.isnan(per_label[2]) and macro == pytest.approx(np.mean(expected))
    assert micro == pytest.approx(average_precision_score(labels, probs, average="micro"))


def _youden_by_brute_force(scores: np.ndarray, positive: np.ndarray) -> float:
    best, best_j = None, -np.inf
    for t in np.unique(scores):  # ascending: ties keep the lowest threshold
        j = (scores[positive] >= t).mean() + (scores[~positive] < t).mean() - 1
        if j > best_j:
            best, best_j = t, j
    return float(best)


def test_thresholds_are_chosen_per_label_on_validation():
    probs, labels = _random(seed=5)
    labels[:, 2] = 0  # no positive of 'hernia' in validation: no threshold, said
    chosen, notes = choose_thresholds(probs, labels, NAMES)
    for k in range(2):
        assert chosen[NAMES[k]]["threshold"] == _youden_by_brute_force(probs[:, k], labels[:, k].astype(bool))
        assert chosen[NAMES[k]]["rule"] == "youden on val"
    assert chosen["hernia"]["threshold"] is None and len(notes) == 1 and "hernia" in notes[0]
    by_sens, _ = choose_thresholds(probs, labels, NAMES, SimpleNamespace(sensitivity=0.9, specificity=None, youden=False))
    for k in range(2):
        t = by_sens[NAMES[k]]["threshold"]
        positive = labels[:, k].astype(bool)
        assert (probs[positive, k] >= t).mean() >= 0.9  # keeps the sensitivity ...
        assert (probs[positive, k] > t).mean() < 0.9  # ... at the highest such threshold


def test_metric_set_at_validation_thresholds_by_hand():
    val_probs, val_labels = _random(seed=7)
    test_probs, test_labels = _random(seed=8)
    test_labels[:, 1] = 0  # 'mass' has no positive in test: AUC and AP undefined there
    chosen, _ = choose_thresholds(val_probs, val_labels, NAMES)
    out = multilabel_metrics(test_probs, test_labels, NAMES, thresholds=chosen, bootstrap=200, seed=1)
    assert out["n"] == 60 and out["labels_defined"] == 2
    for k, name in enumerate(NAMES):
        row, y, p = out["per_label"][name], test_labels[:, k].astype(bool), test_probs[:, k]
        decided = p >= chosen[name]["threshold"]
        sens = (decided & y).sum() / y.sum() if y.sum() else np.nan
        spec = (~decided & ~y).sum() / (~y).sum()
        np.testing.assert_equal(row["sensitivity"], sens)
        assert row["specificity"] == pytest.approx(spec) and row["threshold"] == chosen[name]["threshold"]
        assert row["positives"] == int(y.sum()) and row["negatives"] == int((~y).sum())
    mass = out["per_label"]["mass"]
    assert np.isnan(mass["auc"]) and np.isnan(mass["ap"]) and "auc" not in mass["ci"]
    assert any(text.startswith("mass: no positive image in the test split") for text in out["undefined"])
    defined = [roc_auc_score(test_labels[:, k], test_probs[:, k]) for k in (0, 2)]
    assert out["auc"] == pytest.approx(np.mean(defined), abs=1e-12)
    lo, hi = out["per_label"]["effusion"]["ci"]["auc"]
    assert lo <= out["per_label"]["effusion"]["auc"] <= hi and lo < hi
    lo, hi = out["ci"]["auc"]
    assert lo <= out["auc"] <= hi
    again = multilabel_metrics(test_probs, test_labels, NAMES, thresholds=chosen, bootstrap=200, seed=1)
    assert again["ci"] == out["ci"]  # seeded


def test_metrics_without_thresholds_use_one_half_and_a_label_without_one_is_undefined():
    probs, labels = _random(seed=9)
    at_half = multilabel_metrics(probs, labels, NAMES)
    y = labels[:, 0].astype(bool)
    assert at_half["per_label"]["effusion"]["sensitivity"] == pytest.approx(((probs[:, 0] >= 0.5) & y).sum() / y.sum())
    partial = multilabel_metrics(probs, labels, NAMES, thresholds={"effusion": {"threshold": 0.3, "rule": "youden on val"}})
    assert np.isnan(partial["per_label"]["mass"]["sensitivity"])
    assert any(text.startswith("mass: no operating point") for text in partial["undefined"])


def test_task_objects():
    z = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(MULTI_LABEL_TASK.probabilities(z), 1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(SINGLE_LABEL_TASK.probabilities(z).sum(axis=1), 1.0)
    assert task_of("multilabel") is MULTI_LABEL_TASK and task_of("multiclass") is SINGLE_LABEL_TASK
    assert MULTI_LABEL_TASK.activation == "sigmoid" and SINGLE_LABEL_TASK.activation == "softmax"
    probs, labels = _random()
    assert MULTI_LABEL_TASK.validation_auc(probs, labels) == mean_auc(probs, labels)
    assert MULTI_LABEL_TASK.metrics(probs, labels, NAMES, ece_bins=15)["auc"] == mean_auc(probs, labels)
    with pytest.raises(UsageError, match="task 'regression'"):
        task_of("regression")


def test_bootstrap_intervals_equal_sklearn_on_the_same_resamples():
    """The same seeded resamples scored one by one with scikit-learn give the same percentiles."""
    from medlite.evaluate.multilabel import bootstrap_intervals

    probs, labels = _random(n=40, seed=11)
    per_label, mean_ci = bootstrap_intervals(probs, labels, 50, 0.9, seed=4)
    idx = np.random.default_rng(4).integers(0, 40, (50, 40))
    by_hand = np.array([[roc_auc_score(labels[i, k], probs[i, k]) for k in range(3)] for i in idx])
    for k in range(3):
        np.testing.assert_allclose(per_label[k]["auc"], np.percentile(by_hand[:, k], [5, 95]), atol=1e-12)
        accuracy = [((probs[i, k] > 0.5) == labels[i, k]).mean() for i in idx]
        np.testing.assert_allclose(per_label[k]["accuracy"], np.percentile(accuracy, [5, 95]), atol=1e-12)
    np.testing.assert_allclose(mean_ci["auc"], np.percentile(by_hand.mean(axis=1), [5, 95]), atol=1e-12)


def test_both_tasks_take_the_same_metric_and_accuracy_calls():
    import torch

    probs, labels = _random(seed=12)
    logits = np.log(probs / (1 - probs))
    assert float(MULTI_LABEL_TASK.torch_accuracy(torch.tensor(logits), torch.tensor(labels))) == pytest.approx(mean_accuracy(probs, labels))
    single_probs, single_labels = np.column_stack([1 - probs[:, 0], probs[:, 0]]), labels[:, 0].astype(np.int64)
    common = dict(bootstrap=0, confidence=0.95, seed=0, ece_bins=10, split="test", thresholds=None)
    assert SINGLE_LABEL_TASK.metrics(single_probs, single_labels, ["no", "yes"], **common)["auc"] == pytest.approx(
        roc_auc_score(single_labels, probs[:, 0]))
    assert MULTI_LABEL_TASK.metrics(probs, labels, NAMES, **common)["auc"] == pytest.approx(mean_auc(probs, labels))
    assert float(SINGLE_LABEL_TASK.torch_accuracy(torch.tensor(single_probs), torch.tensor(single_labels))) == pytest.approx(
        ((probs[:, 0] > 0.5) == labels[:, 0]).mean())
