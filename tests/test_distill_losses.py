"""Distillation losses against formulas written out independently here (NumPy), plus limits and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medlite.distill import losses
from medlite.distill.config import CONFIGS, ATConfig, DISTConfig, DKDConfig, FitNetConfig, KDConfig, MultiStageConfig
from medlite.distill.methods import METHODS, StudentOutput, TeacherOutput, build_method, register_method
from medlite.models import create
from medlite.models.taps import FeatureTaps


def _softmax(z, t=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def _kl_rows(p, q):
    """KL(p || q) per row."""
    return (p * (np.log(np.clip(p, 1e-30, None)) - np.log(q))).sum(-1)


def _case(n=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, k)) * 2
    t = rng.normal(size=(n, k)) * 3
    y = rng.integers(0, k, size=n)
    return s, t, y


def _hard(y):
    labels = torch.as_tensor(y)
    return lambda z: F.cross_entropy(z, labels)


def _ce(z, y):
    return float(np.mean(-np.log(_softmax(z)[np.arange(len(y)), y])))


def test_kd_matches_hinton_formula():
    s, t, y = _case()
    T, alpha = 4.0, 0.7
    expected = alpha * T * T * _kl_rows(_softmax(t, T), _softmax(s, T)).mean() + (1 - alpha) * _ce(s, y)
    method = METHODS["kd"](KDConfig(temperature=T, alpha=alpha))
    got = method.loss(StudentOutput(torch.tensor(s)), TeacherOutput([torch.tensor(t)]), torch.tensor(y),
                      hard_loss=_hard(y), epoch=0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # The functional form is the same formula, bit for bit.
    direct = losses.kd_loss(torch.tensor(s), losses.soften(torch.tensor(t), T), _hard(y)(torch.tensor(s)), T, alpha)
    assert float(direct) == float(got)


def test_the_kd_method_computes_its_loss_with_kd_loss(monkeypatch):
    """One KD formula, not two: the pipeline's `kd` method is `losses.kd_loss`."""
    s, t, y = _case()
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return torch.tensor(42.0)

    monkeypatch.setattr(losses, "kd_loss", spy)
    method = METHODS["kd"](KDConfig(temperature=2.0, alpha=0.5))
    got = method.loss(StudentOutput(torch.tensor(s)), TeacherOutput([torch.tensor(t)]), torch.tensor(y),
                      hard_loss=_hard(y), epoch=0)
    assert float(got) == 42.0 and len(calls) == 1


def test_kd_high_temperature_limit_is_logit_matching():
    """Hinton et al. 2015, sec. 2.1: for large T, T^2 KL -> sum((z_s - z_t)^2) / (2K) on zero-mean logits."""
    s, t, _ = _case(k=4)
    s, t = s - s.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    T = 1000.0
    expected = (((s - t) ** 2).sum(1) / (2 * s.shape[1])).mean()
    got = losses.soft_kl(torch.tensor(s), losses.soften(torch.tensor(t), T), T)
    assert float(got) == pytest.approx(expected, rel=1e-3)


def test_kd_zero_temperature_limit_is_cross_entropy_on_teacher_argmax():
    """As T -> 0 the teacher's soft targets become one-hot: KL / T^2 = CE(s / T, argmax t)."""
    s, t, _ = _case()
    T = 1e-2
    soft = losses.soften(torch.tensor(t), T)
    assert torch.allclose(soft, F.one_hot(torch.tensor(t).argmax(1), t.shape[1]).double(), atol=1e-12)
    expected = _ce(s / T, t.argmax(1))
    got = float(losses.soft_kl(torch.tensor(s), soft, T)) / (T * T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_identical_logits_give_zero_distillation_terms():
    s, _, y = _case()
    z = torch.tensor(s)
    assert float(losses.soft_kl(z, losses.soften(z, 3.0), 3.0)) == pytest.approx(0, abs=1e-9)
    tckd, nckd = losses.dkd_terms(z, losses.soften(z, 3.0), torch.tensor(y), 3.0)
    assert float(tckd) == pytest.approx(0, abs=1e-9) and float(nckd) == pytest.approx(0, abs=1e-7)
    inter, intra = losses.dist_terms(z, losses.soften(z, 1.0), 1.0)
    assert float(inter) == pytest.approx(0, abs=1e-6) and float(intra) == pytest.approx(0, abs=1e-6)


def _dkd_reference(s, t, y, T):
    """TCKD and NCKD per sample, from the paper's definitions (sec. 3.1), x T^2."""
    p_s, p_t = _softmax(s, T), _softmax(t, T)
    rows = np.arange(len(y))
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], 1)
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], 1)
    tckd = _kl_rows(b_t, b_s)
    mask = np.ones_like(p_s, bool)
    mask[rows, y] = False
    nckd = np.array([_kl_rows(p_t[i, mask[i]] / p_t[i, mask[i]].sum(), p_s[i, mask[i]] / p_s[i, mask[i]].sum()) for i in rows])
    return tckd * T * T, nckd * T * T, p_t[rows, y]


def test_dkd_terms_match_the_paper_and_recompose_kd():
    s, t, y = _case(n=8, k=6)
    T = 4.0
    tckd, nckd, pt = _dkd_reference(s, t, y, T)
    got_t, got_n = losses.dkd_terms(torch.tensor(s), losses.soften(torch.tensor(t), T), torch.tensor(y), T)
    assert float(got_t) == pytest.approx(tckd.mean(), rel=1e-6)
    assert float(got_n) == pytest.approx(nckd.mean(), rel=1e-5)
    # KD = TCKD + (1 - p_t^T) NCKD, per sample (Zhao et al., eq. 7).
    kd = _kl_rows(_softmax(t, T), _softmax(s, T)) * T * T
    for i in range(len(y)):
        one_t, one_n = losses.dkd_terms(torch.tensor(s[i : i + 1]), losses.soften(torch.tensor(t[i : i + 1]), T),
                                        torch.tensor(y[i : i + 1]), T)
        assert float(one_t) + (1 - pt[i]) * float(one_n) == pytest.approx(kd[i], rel=1e-5)


def test_dkd_with_kd_weights_equals_kd():
    """alpha = 1, beta = 1 - p_t^T (one image at a time) and no label term turn DKD into pure KD (alpha = 1)."""
    s, t, y = _case(n=5, k=4, seed=3)
    T = 2.0
    for i in range(len(y)):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        beta = float(1 - _softmax(ti, T)[0, yi[0]])
        dkd = METHODS["dkd"](DKDConfig(temperature=T, alpha=1.0, beta=beta, ce_weight=0.0, warmup_epochs=0))
        kd = METHODS["kd"](KDConfig(temperature=T, alpha=1.0))
        args = (StudentOutput(torch.tensor(si)), TeacherOutput([torch.tensor(ti)]), torch.tensor(yi))
        a = float(dkd.loss(*args, hard_loss=_hard(yi), epoch=0))
        b = float(kd.loss(*args, hard_loss=_hard(yi), epoch=0))
        assert a == pytest.approx(b, rel=1e-5)
        assert b == pytest.approx(_kl_rows(_softmax(ti, T), _softmax(si, T))[0] * T * T, rel=1e-6)


def test_dkd_two_classes_has_no_non_target_term_and_warms_up():
    s, t, y = _case(n=6, k=2)
    T = 4.0
    tckd, nckd = losses.dkd_terms(torch.tensor(s), losses.soften(torch.tensor(t), T), torch.tensor(y), T)
    assert float(nckd) == pytest.approx(0, abs=1e-9)
    kd = (_kl_rows(_softmax(t, T), _softmax(s, T)) * T * T).mean()
    assert float(tckd) == pytest.approx(kd, rel=1e-6)  # binary: TCKD is KD
    method = METHODS["dkd"](DKDConfig(temperature=T, alpha=1.0, beta=8.0, warmup_epochs=4))
    args = (StudentOutput(torch.tensor(s)), TeacherOutput([torch.tensor(t)]), torch.tensor(y))
    ce = _ce(s, y)
    for epoch, ramp in ((0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)):
        assert float(method.loss(*args, hard_loss=_hard(y), epoch=epoch)) == pytest.approx(ce + ramp * kd, rel=1e-6)


def test_logit_standardisation_matches_zscore_and_ignores_teacher_scale():
    s, t, y = _case()
    z = (t - t.mean(1, keepdims=True)) / t.std(1, ddof=1, keepdims=True)
    assert np.allclose(losses.standardize(torch.tensor(t)).numpy(), z, atol=1e-6)
    method = METHODS["kd"](KDConfig(temperature=2.0, alpha=1.0, standardize=True))
    out = lambda teacher: float(method.loss(StudentOutput(torch.tensor(s)), TeacherOutput([torch.tensor(teacher)]),  # noqa: E731
                                            torch.tensor(y), hard_loss=_hard(y), epoch=0))
    assert out(t) == pytest.approx(out(5 * t + 3), rel=1e-6)  # a scaled, shifted teacher teaches the same
    zs = (s - s.mean(1, keepdims=True)) / s.std(1, ddof=1, keepdims=True)
    assert out(t) == pytest.approx(4 * _kl_rows(_softmax(z, 2.0), _softmax(zs, 2.0)).mean(), rel=1e-5)


def test_dist_matches_pearson_relations():
    s, t, y = _case(n=10, k=5)
    T = 2.0
    p_s, p_t = _softmax(s, T), _softmax(t, T)
    inter = 1 - np.mean([np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(len(s))])
    intra = 1 - np.mean([np.corrcoef(p_s[:, j], p_t[:, j])[0, 1] for j in range(s.shape[1])])
    method = METHODS["dist"](DISTConfig(temperature=T, beta=2.0, gamma=3.0, ce_weight=0.5))
    got = method.loss(StudentOutput(torch.tensor(s)), TeacherOutput([torch.tensor(t)]), torch.tensor(y), hard_loss=_hard(y), epoch=0)
    assert float(got) == pytest.approx(0.5 * _ce(s, y) + T * T * (2 * inter + 3 * intra), rel=1e-5)


def test_ensemble_targets_are_the_weighted_mean_of_softened_probabilities():
    _, t1, _ = _case(seed=1)
    _, t2, _ = _case(seed=2)
    out = TeacherOutput([torch.tensor(t1), torch.tensor(t2)], weights=[1.0, 3.0])
    expected = 0.25 * _softmax(t1, 4.0) + 0.75 * _softmax(t2, 4.0)
    assert np.allclose(out.probs(4.0).numpy(), expected, atol=1e-12)


def test_attention_transfer_matches_the_paper():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(3, 8, 6, 6)), rng.normal(size=(3, 16, 6, 6))

    def att(f):
        a = (np.abs(f) ** 2).mean(1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = ((att(fs) - att(ft)) ** 2).mean()
    assert float(losses.at_loss(torch.tensor(fs), torch.tensor(ft))) == pytest.approx(expected, rel=1e-6)
    assert float(losses.at_loss(torch.tensor(ft), torch.tensor(3 * ft))) == pytest.approx(0, abs=1e-12)  # scale-free


# -- whole methods on real models: gradients reach the student, never the teacher -----------


@pytest.mark.parametrize("cfg", [KDConfig(), DKDConfig(), DISTConfig(), KDConfig(standardize=True), FitNetConfig(),
                                 ATConfig(), MultiStageConfig()], ids=lambda c: f"{c.method}{'_ls' if getattr(c, 'standardize', False) else ''}")
def test_gradients_reach_the_student_and_never_the_teacher(cfg):
    torch.manual_seed(0)
    teacher = create("medlite_cnn_tiny", 3, 1, 28)
    student = create(cfg.student_arch("medlite_dsconv_tiny"), 3, 1, 28)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    method = build_method(cfg, student, [teacher], x)
    s_taps, t_taps = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    logits = student(x)
    t_logits = teacher(x)  # deliberately with autograd on: the method itself must not back-propagate into it
    loss = method.loss(StudentOutput(logits, s_taps.take()), TeacherOutput([t_logits], None, t_taps.take()),
                       y, hard_loss=_hard(y.numpy()), epoch=10)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0
    for p in method.parameters():  # adapters and exits learn too, and are not part of the student
        assert p.grad is not None
    student_params = {id(p) for p in student.parameters()}
    assert not any(id(p) in student_params for p in method.parameters())
    s_taps.remove()
    t_taps.remove()


def test_multistage_weights_and_exits():
    torch.manual_seed(0)
    teacher = create("medlite_cnn_tiny", 2, 1, 28)
    cfg = MultiStageConfig(temperature=3.0)
    student = create(cfg.student_arch("medlite_dsconv_tiny"), 2, 1, 28)
    x, y = torch.randn(5, 1, 28, 28), np.array([0, 1, 1, 0, 1])
    method = build_method(cfg, student, [teacher], x)
    taps = FeatureTaps(student, method.student_taps())
    logits = student(x)
    out = StudentOutput(logits, taps.take())
    with torch.no_grad():
        t = teacher(x)
    got = method.loss(out, TeacherOutput([t]), torch.tensor(y), hard_loss=_hard(y), epoch=0)
    exits = [e.detach().numpy() for e in method.exit_logits(out)]
    assert len(exits) == len(method.student_taps()) == 2  # every stage but the last
    p_t = _softmax(t.numpy(), 3.0)
    kl = lambda z: (_kl_rows(p_t, _softmax(z, 3.0)) * 9).mean()  # noqa: E731
    expected = 0.3 * np.mean([kl(e) for e in exits]) + 0.3 * kl(logits.detach().numpy()) + 0.4 * _ce(logits.detach().numpy(), y)
    assert got.item() == pytest.approx(expected, rel=1e-5)  # .item(): float() of a graph tensor warns
    only_labels = build_method(MultiStageConfig(intermediate_weight=0, logits_weight=0, labels_weight=1), student, [teacher], x)
    assert only_labels.loss(out, TeacherOutput([t]), torch.tensor(y), hard_loss=_hard(y), epoch=0).item() == pytest.approx(
        _ce(logits.detach().numpy(), y), rel=1e-6)


def test_registry_covers_every_config_and_refuses_duplicates():
    assert set(METHODS) == set(CONFIGS)
    with pytest.raises(KeyError, match="registered twice"):
        register_method("kd")(type("Again", (METHODS["kd"],), {}))
    with pytest.raises(KeyError, match="no config model"):
        register_method("nonexistent")(type("New", (METHODS["kd"],), {}))


def test_feature_methods_refuse_an_ensemble():
    from medlite.errors import UsageError

    teachers = [create("medlite_cnn_tiny", 2, 1, 28) for _ in range(2)]
    with pytest.raises(UsageError, match="one teacher"):
        build_method(FitNetConfig(), create("medlite_dsconv_tiny", 2, 1, 28), teachers, torch.zeros(2, 1, 28, 28))
