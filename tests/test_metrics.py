import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medlite.distill.losses import kd_loss, soften
from medlite.evaluate.metrics import auc, bootstrap_ci, classification_metrics, expected_calibration_error, softmax


def test_binary_metrics_match_hand_computation():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    m = classification_metrics(probs, labels, ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # predicted: 0,1,1,0,1 -> pos sensitivity 2/3, neg sensitivity 1/2
    assert m["per_class"]["pos"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["per_class"]["pos"]["specificity"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]


def test_multiclass_auc_is_macro_ovr():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = softmax(rng.normal(size=(60, 3)) + np.eye(3)[labels] * 1.5)
    assert auc(probs, labels) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def test_ece_zero_for_perfectly_calibrated_and_positive_otherwise():
    labels = np.array([0, 1] * 50)
    confident_right = np.eye(2)[labels].astype(float)
    assert expected_calibration_error(confident_right, labels) == pytest.approx(0.0)
    confident_wrong = np.eye(2)[1 - labels].astype(float)
    assert expected_calibration_error(confident_wrong, labels) == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    probs = softmax(rng.normal(size=(200, 2)) + np.eye(2)[labels])
    a = bootstrap_ci(probs, labels, 300, 0.95, seed=7)
    b = bootstrap_ci(probs, labels, 300, 0.95, seed=7)
    assert a == b
    acc = (probs.argmax(1) == labels).mean()
    assert a["accuracy"][0] <= acc <= a["accuracy"][1]
    assert a["auc"][0] <= auc(probs, labels) <= a["auc"][1]


def test_kd_loss_matches_formula():
    torch.manual_seed(0)
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    T, alpha = 4.0, 0.7
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * torch.nn.functional.cross_entropy(s, y)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert kd_loss(s, soften(t, T), ce, T, alpha).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_alpha_zero_is_cross_entropy_and_teacher_gets_no_gradient():
    s = torch.randn(4, 2, requires_grad=True)
    t = torch.randn(4, 2, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    loss = kd_loss(s, soften(t, 2.0), torch.nn.functional.cross_entropy(s, y), 2.0, 0.0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())
    kd_loss(s, soften(t, 2.0), torch.nn.functional.cross_entropy(s, y), 2.0, 1.0).backward()
    assert t.grad is None and s.grad is not None


def test_kd_loss_zero_when_student_equals_teacher_and_alpha_one():
    logits = torch.randn(5, 4)
    hard = torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert kd_loss(logits, soften(logits, 3.0), hard, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_no_better_than_chance_is_named():
    from medlite.evaluate.stage import no_better_than_chance

    good = {"auc": 0.9, "ci": {"auc": [0.82, 0.96]}, "confusion_matrix": [[40, 10], [5, 45]]}
    assert no_better_than_chance(good, ["a", "b"], "test", 0.95) is None
    wide = {"auc": 0.58, "ci": {"auc": [0.49, 0.66]}, "confusion_matrix": [[40, 10], [5, 45]]}
    assert no_better_than_chance(wide, ["a", "b"], "test", 0.95) == (
        "no better than chance: test AUC 0.580 (95% CI 0.490-0.660) includes 0.5")
    one_class = {"auc": 0.7, "ci": {"auc": [0.6, 0.8]}, "confusion_matrix": [[0, 50], [0, 50]]}
    assert no_better_than_chance(one_class, ["a", "b"], "test", 0.95) == (
        "no better than chance: predicts 'b' for every test image")
