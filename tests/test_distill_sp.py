"""Similarity-preserving KD (the method added last: it touches only distill/ and its own test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medlite.distill.config import SPConfig
from medlite.distill.methods import StudentOutput, TeacherOutput, build_method
from medlite.models import create
from medlite.models.taps import FeatureTaps
from medlite.recipe import load_recipe


def _g(a):
    q = a.reshape(len(a), -1)
    g = q @ q.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_sp_matches_tung_and_mori():
    torch.manual_seed(0)
    student, teacher = create("medlite_dsconv_tiny", 2, 1, 28), create("medlite_cnn_tiny", 2, 1, 28)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 1, 0, 1, 0])
    method = build_method(SPConfig(gamma=10.0), student, [teacher], x)
    assert method.student_taps() == ["stages.2"] and method.teacher_taps() == ["stages.2"]
    s_taps, t_taps = FeatureTaps(student, method.student_taps()), FeatureTaps(teacher, method.teacher_taps())
    logits = student(x)
    t_logits = teacher(x)
    fs, ft = s_taps.take(), t_taps.take()
    loss = method.loss(StudentOutput(logits, fs), TeacherOutput([t_logits], None, ft), y,
                       hard_loss=lambda z: F.cross_entropy(z, y), epoch=0)
    a_s, a_t = fs["stages.2"].detach().double().numpy(), ft["stages.2"].detach().double().numpy()
    expected = F.cross_entropy(logits, y).item() + 10.0 * ((_g(a_t) - _g(a_s)) ** 2).sum() / 36
    assert loss.item() == pytest.approx(expected, rel=1e-4)  # .item(): float() of a graph tensor warns
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.stages[2][0].pointwise[0].weight.grad.abs().sum() > 0
    # Zero when the student's similarities are the teacher's (any scale: G is row-normalised).
    same = method.loss(StudentOutput(logits, {"stages.2": 3 * ft["stages.2"]}), TeacherOutput([t_logits], None, ft), y,
                       hard_loss=lambda z: torch.zeros(()), epoch=0)
    assert same.item() == pytest.approx(0, abs=1e-6)


def test_sp_is_one_recipe_key_away():
    recipe = load_recipe("breastmnist", ["distill={method: sp, gamma: 100}"])
    assert recipe.distill.method == "sp" and recipe.distill.gamma == 100
