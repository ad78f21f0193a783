"""Multi-label losses (distill/losses.py) against explicit numpy formulas written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.distill.losses import asymmetric_loss, binary_kl, multilabel_bce, multilabel_kd_loss, soften_binary
from medlite.errors import DataError, UsageError
from medlite.task import MULTI_LABEL_TASK, pos_weight


def _sig(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _batch(seed: int = 0, n: int = 6, k: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, (n, k)), rng.normal(0, 2, (n, k)), rng.integers(0, 2, (n, k)).astype(np.float64)


def test_binary_kl_equals_the_per_label_bernoulli_kl_formula():
    student, teacher, _ = _batch()
    for t in (1.0, 4.0):
        p, q = _sig(teacher / t), _sig(student / t)  # teacher, student Bernoulli probabilities at T
        kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
        expected = kl.mean() * t * t
        got = binary_kl(torch.tensor(student), soften_binary(torch.tensor(teacher), t), t)
        assert float(got) == pytest.approx(expected, rel=1e-6)


def test_binary_kl_is_zero_on_the_teacher_and_finite_where_the_sigmoid_saturates():
    z = torch.tensor([[50.0, -50.0, 0.0]], requires_grad=True)
    same = binary_kl(z, soften_binary(z.detach(), 2.0), 2.0)
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-6)
    far = binary_kl(z, torch.tensor([[0.0, 1.0, 0.5]]), 1.0)  # teacher certain of the opposite
    far.backward()
    assert torch.isfinite(far) and torch.isfinite(z.grad).all() and float(far.detach()) > 10


def test_multilabel_kd_mixes_soft_and_hard_with_alpha():
    student, teacher, _ = _batch(1)
    s, soft = torch.tensor(student), soften_binary(torch.tensor(teacher), 3.0)
    hard = torch.tensor(0.8)
    assert float(multilabel_kd_loss(s, soft, hard, 3.0, 0.7)) == pytest.approx(0.7 * float(binary_kl(s, soft, 3.0)) + 0.3 * 0.8)


def test_bce_with_per_label_pos_weight_equals_the_formula():
    logits, _, y = _batch(2)
    w = np.array([1.0, 2.0, 0.5, 4.0])
    q = _sig(logits)
    expected = -(w * y * np.log(q) + (1 - y) * np.log(1 - q)).mean()
    assert float(multilabel_bce(torch.tensor(logits), torch.tensor(y), torch.tensor(w))) == pytest.approx(expected, rel=1e-6)
    plain = -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean()
    assert float(multilabel_bce(torch.tensor(logits), torch.tensor(y))) == pytest.approx(plain, rel=1e-6)


def test_asymmetric_loss_equals_the_formula():
    """ASL (Ridnik et al. 2021): positives (1 - q)^g+ log q, negatives q_m^g- log(1 - q_m) with the
    shifted probability q_m = max(q - clip, 0); averaged over images and labels."""
    logits, _, y = _batch(3)
    q = _sig(logits)
    gamma_pos, gamma_neg, clip = 1.0, 4.0, 0.05
    q_m = np.maximum(q - clip, 0)
    per = -(y * (1 - q) ** gamma_pos * np.log(q) + (1 - y) * q_m ** gamma_neg * np.log(np.maximum(1 - q_m, 1e-8)))
    got = asymmetric_loss(torch.tensor(logits), torch.tensor(y), gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    assert float(got) == pytest.approx(per.mean(), rel=1e-5)
    # without focusing and clipping it is BCE
    bce = float(multilabel_bce(torch.tensor(logits), torch.tensor(y)))
    assert float(asymmetric_loss(torch.tensor(logits), torch.tensor(y), gamma_neg=0, gamma_pos=0, clip=0)) == pytest.approx(bce, rel=1e-5)


def test_pos_weight_is_negatives_over_positives_per_label():
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(pos_weight(labels), [2 / 2, 3 / 1])
    with pytest.raises(DataError, match="label column 1 has no positive"):
        pos_weight(np.array([[1, 0], [0, 0]]))


def test_the_task_picks_the_hard_loss():
    logits, _, y = _batch(4)
    z, target = torch.tensor(logits), torch.tensor(y)
    assert float(MULTI_LABEL_TASK.hard_loss(z, target)) == pytest.approx(float(multilabel_bce(z, target)))
    assert float(MULTI_LABEL_TASK.hard_loss(z, target, loss="asymmetric")) == pytest.approx(float(asymmetric_loss(z, target)))
    with pytest.raises(UsageError, match="multi-label loss 'focal'"):
        MULTI_LABEL_TASK.hard_loss(z, target, loss="focal")
    probs = MULTI_LABEL_TASK.torch_probabilities(z, 2.0)
    assert torch.allclose(probs, soften_binary(z, 2.0))


def test_the_task_picks_the_kd_loss_and_refuses_what_has_no_multi_label_meaning():
    from medlite.distill.losses import kd_loss
    from medlite.task import SINGLE_LABEL_TASK

    student, teacher, _ = _batch(5)
    s, t = torch.tensor(student), torch.tensor(teacher)
    hard = torch.tensor(0.5)
    soft = MULTI_LABEL_TASK.torch_probabilities(t, 4.0)
    assert float(MULTI_LABEL_TASK.kd_loss(s, soft, hard, 4.0, 0.7)) == pytest.approx(float(multilabel_kd_loss(s, soft, hard, 4.0, 0.7)))
    single = SINGLE_LABEL_TASK.torch_probabilities(t, 4.0)
    assert float(SINGLE_LABEL_TASK.kd_loss(s, single, hard, 4.0, 0.7)) == pytest.approx(float(kd_loss(s, single, hard, 4.0, 0.7)))
    with pytest.raises(UsageError, match="distill.standardize"):
        MULTI_LABEL_TASK.kd_loss(s, soft, hard, 4.0, 0.7, standardized=True)
    with pytest.raises(UsageError, match="data.balance: 'sampler'"):
        MULTI_LABEL_TASK.check_balance("sampler")
    MULTI_LABEL_TASK.check_balance("class_weights")
    SINGLE_LABEL_TASK.check_balance("sampler")


def test_numpy_sigmoid_is_stable_and_precise_at_the_extremes():
    import warnings

    from medlite.task import sigmoid

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning
        p = sigmoid(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]))
    assert p[0] == 0.0 and p[-1] == 1.0 and p[2] == 0.5
    assert p[1] == pytest.approx(np.exp(-40.0), rel=1e-12)  # not 1 - (a number near 1) = 0
    np.testing.assert_allclose(sigmoid(np.linspace(-5, 5, 11)), torch.sigmoid(torch.linspace(-5, 5, 11, dtype=torch.float64)).numpy())
