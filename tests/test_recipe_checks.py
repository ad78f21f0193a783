"""Recipes that mean what they say (issue 18): duplicate keys, nothing trained, a class with no
training image, `tune --set` against the search space."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medlite.data import load_dataset
from medlite.data.config import DataConfig
from medlite.errors import DataError, UsageError
from medlite.recipe import load_recipe

SRC = Path(__file__).resolve().parents[1] / "src"


def test_duplicate_key_in_a_recipe_is_refused_naming_both_lines(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: {epochs: 1}\nstudent: {epochs: 1}\nteacher:\n  arch: medlite_cnn_tiny\n")
    with pytest.raises(UsageError) as err:
        load_recipe(str(recipe))
    assert str(recipe) in str(err.value) and "'teacher'" in str(err.value)
    assert "line 1" in str(err.value) and "line 3" in str(err.value)


def test_duplicate_nested_key_is_refused_and_merge_keys_still_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher:\n  epochs: 1\n  lr: 0.01\n  epochs: 3\n")
    with pytest.raises(UsageError, match=r"'epochs' given twice \(line 2 and line 4\)"):
        load_recipe(str(recipe))
    merged = tmp_path / "m.yaml"
    merged.write_text("teacher: &b {epochs: 2, arch: medlite_cnn_tiny}\n"
                      "student:\n  <<: *b\n  epochs: 3\n  arch: medlite_dsconv_tiny\n")
    parsed = load_recipe(str(merged))
    assert parsed.student.epochs == 3 and parsed.teacher.epochs == 2


def test_duplicate_key_in_a_study_file_is_refused(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("recipe: breastmnist\ngrid: {distill.alpha: [0.3]}\nseeds: [0]\ngrid: {distill.alpha: [0.7]}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "medlite.cli", "study", str(study), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'grid' given twice (line 2 and line 4)" in result.stderr and str(study) in result.stderr


def test_nothing_trained_is_refused():
    with pytest.raises(UsageError, match=r"--set teacher.epochs=0: teacher.epochs=0 .*untrained"):
        load_recipe(None, ["teacher.epochs=0", "student.epochs=0"])
    with pytest.raises(UsageError, match=r"student.epochs=0 .*untrained"):
        load_recipe(None, ["student.epochs=0"])
    # A teacher started from pretrained weights and used as it is trains nothing, on purpose.
    assert load_recipe(None, ["teacher.epochs=0", "teacher.pretrained=teacher.safetensors"]).teacher.epochs == 0


def test_a_class_with_no_training_image_is_refused_naming_it(busi_root):
    cfg = DataConfig(source="folder", root=str(busi_root), image_size=16, limit=2)
    with pytest.raises(DataError, match=r"class 'normal' has no image in the train split.*data.limit=2"):
        load_dataset(cfg, busi_root, seed=0)
    summary = load_dataset(cfg, busi_root, seed=0, multilabel=True).summary()  # `medlite data` shows it
    assert summary["per_class"]["train"]["normal"] == 0


TINY = ["data.limit=40", "teacher.arch=medlite_cnn_tiny", "teacher.epochs=1", "student.arch=medlite_cnn_tiny",
        "compress.methods=[]", "bench.enabled=false", "evaluate.bootstrap=0", "explain.enabled=false"]


def test_tune_does_not_search_a_key_fixed_with_set(tmp_path, data_root):
    pytest.importorskip("optuna")
    from medlite.study.tune import tune

    lines: list[str] = []
    doc = tune("breastmnist", tmp_path / "tune", data_root, overrides=TINY + ["student.epochs=1"], budget_s=300,
               max_trials=1, say=lines.append)
    assert "student.epochs" not in doc["space"] and "student.epochs" not in doc["trials"][0]["params"]
    assert any("not searching student.epochs (fixed with --set)" in line for line in lines), lines
    trial = load_recipe(str(tmp_path / "tune" / doc["trials"][0]["dir"] / "recipe.resolved.yaml"))
    assert trial.student.epochs == 1
    assert load_recipe(str(tmp_path / "tune" / "selected.yaml")).student.epochs == 1


def test_tune_refuses_a_space_that_names_a_fixed_key(tmp_path, data_root):
    pytest.importorskip("optuna")
    from medlite.study.tune import tune

    with pytest.raises(UsageError, match="student.epochs is fixed with --set and also in the search space"):
        tune("breastmnist", tmp_path / "tune", data_root, overrides=["student.epochs=2"],
             space={"student.epochs": ("int", 10, 60, 10)}, say=lambda _: None)
    assert not (tmp_path / "tune").exists()
