"""Distillation through the whole pipeline on real BreastMNIST (tiny: 48 images a split, 1 epoch, tiny models):
teachers' ensemble + assistant chain (dkd), kd, a feature method (fitnet) and multistage, each measured
on its exported file; lineage as data; a rerun reuses every stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlite.errors import UsageError
from medlite.models import count_params, create
from medlite.recipe import Recipe

BASE = {
    "name": "tiny",
    "data": {"flag": "breastmnist", "limit": 48, "balance": "class_weights"},
    "teacher": {"arch": "medlite_cnn_tiny", "epochs": 1},
    "student": {"arch": "medlite_dsconv_tiny", "epochs": 2},
    "evaluate": {"bootstrap": 0},
    "compress": {"methods": []},
}


def _run(out, data_root, **sections):
    from medlite.pipeline import run_pipeline

    tree = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        tree[key] = value
    if "teachers" in tree:
        tree.pop("teacher")
    lines: list[str] = []
    results = run_pipeline(Recipe.model_validate(tree), out, data_root, say=lines.append, progress=False)
    return results, {v["name"]: v for v in results["variants"]}, lines


def _measured(out, variant):
    assert variant["file"].endswith(".onnx") and (out / variant["file"]).is_file()
    assert 0.0 <= variant["metrics"]["auc"] <= 1.0
    assert variant["export"]["max_abs_diff"] < 1e-3


def test_ensemble_of_teachers_through_an_assistant_with_dkd(tmp_path, data_root):
    sections = dict(
        teachers=[{"arch": "medlite_cnn_tiny", "epochs": 1}, {"arch": "medlite_dsconv_tiny", "epochs": 1}],
        assistants=[{"arch": "medlite_cnn_tiny", "epochs": 1}],
        distill={"method": "dkd", "warmup_epochs": 1, "teacher_weights": [1.0, 2.0]},
    )
    results, v, lines = _run(tmp_path, data_root, **sections)
    assert list(v) == ["teacher_0", "teacher_1", "teacher_ensemble", "assistant_1", "student_scratch", "student_kd"]
    for variant in v.values():
        _measured(tmp_path, variant)
    ens = v["teacher_ensemble"]
    assert ens["stage"] == "ensemble" and ens["teachers"] == ["teacher_0", "teacher_1"]
    assert ens["arch"] == "ensemble(medlite_cnn_tiny,medlite_dsconv_tiny)"
    assert ens["train"]["weights"] == pytest.approx([1 / 3, 2 / 3])
    assert ens["params"] == v["teacher_0"]["params"] + v["teacher_1"]["params"]
    assert v["assistant_1"]["teachers"] == ["teacher_0", "teacher_1"] and v["assistant_1"]["parent"] == "teacher_ensemble"
    assert v["student_kd"]["teachers"] == ["assistant_1"] and v["student_kd"]["parent"] == "assistant_1"
    assert v["student_scratch"]["teachers"] == [] and v["student_scratch"]["parent"] is None
    # The ensemble's file really averages its members: its test predictions lie between theirs.
    from medlite.data import load_dataset
    from medlite.export.onnx import run_onnx

    ds = load_dataset(Recipe.model_validate(BASE).data, data_root, 0)
    x = ((ds.splits["test"].images.astype(np.float32) / 255 - ds.mean) / ds.std).transpose(0, 3, 1, 2)
    probs = [np.exp(run_onnx(tmp_path / v[n]["file"], x)) if n == "teacher_ensemble" else _softmax(run_onnx(tmp_path / v[n]["file"], x))
             for n in ("teacher_0", "teacher_1", "teacher_ensemble")]
    assert np.allclose(probs[2], probs[0] / 3 + 2 * probs[1] / 3, atol=1e-4)

    again, _, _ = _run(tmp_path, data_root, **sections)
    assert set(again["cached_stages"]) >= set(v), "a rerun of the same recipe must reuse every stage"


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("method", ["kd", "fitnet", "multistage"])
def test_single_teacher_methods(tmp_path, data_root, method):
    # kd distils from a small ViT (timm, 28 px, 4 px patches): it trains, teaches and exports like any teacher.
    teacher = {"arch": "small_vit_tiny_patch16_224" if method == "kd" else "medlite_cnn_tiny", "epochs": 1, "lr": 1e-3}
    results, v, lines = _run(tmp_path, data_root, teacher=teacher, distill={"method": method, "scratch_baseline": method == "kd"})
    assert list(v) == (["teacher", "student_scratch", "student_kd"] if method == "kd" else ["teacher", "student_kd"])
    for variant in v.values():
        _measured(tmp_path, variant)
    kd = v["student_kd"]
    assert kd["teachers"] == ["teacher"] and kd["stage"] == "distill"
    if method == "multistage":
        # The fused classifier is part of the deployed student; the exits are not.
        assert kd["arch"] == "fused(medlite_dsconv_tiny)"
    else:
        assert kd["arch"] == "medlite_dsconv_tiny"
    assert kd["params"] == count_params(create(kd["arch"], 2, 1, 28))  # no adapter or exit in the deployed model
    if method == "kd":
        # The scratch baseline is the fair one (issue 21): live augmentation, not the teacher bank's views.
        assert v["student_scratch"]["train"]["teacher_cache_seconds"] == 0
        assert v["student_scratch"]["training"]["views"] == "live" and kd["training"]["views"] == "bank"
    if method == "fitnet":
        # A feature method runs the teacher live (no bank), and its adapter is not in the student's file.
        assert kd["train"]["teacher_cache_seconds"] == 0
    assert any(f"({method}, " in line for line in lines)  # "(kd, bank views)"


def test_feature_method_with_several_teachers_fails_before_training(tmp_path, data_root):
    with pytest.raises(UsageError, match="one teacher"):
        _run(tmp_path, data_root, teachers=["medlite_cnn_tiny", "medlite_cnn_tiny"], distill={"method": "at"})
    assert not (tmp_path / "results.json").exists()


def test_compressing_a_student_of_two_teachers_fine_tunes_from_both(tmp_path, data_root):
    """Fine-tuning after pruning distils from the same teachers as the student's own training."""
    sections = dict(
        teachers=[{"arch": "medlite_cnn_tiny", "epochs": 1}, {"arch": "medlite_dsconv_tiny", "epochs": 1}],
        compress={"targets": ["student_kd"], "methods": ["prune_structured"], "prune_structured": {"epochs": 1}},
    )
    results, v, lines = _run(tmp_path, data_root, **sections)
    assert v["student_kd"]["teachers"] == ["teacher_0", "teacher_1"]
    pruned = v["student_kd_pruned"]
    assert pruned["parent"] == "student_kd" and pruned["teachers"] == ["teacher_0", "teacher_1"]
    assert any("student_kd_pruned: fine-tuning 1 epochs" in line and "distilling from teacher_0 + teacher_1" in line
               for line in lines), lines
    _measured(tmp_path, pruned)
