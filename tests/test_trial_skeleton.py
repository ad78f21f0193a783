"""Issue 18: a study or tune trial that fails before computing anything leaves no skeleton of empty
folders, marker and lock in the study directory; only what that trial made is removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlite.recipe import load_recipe


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_failed_study_trial_keeps_only_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")  # the missing data fails at once, no download tried
    from medlite.study.worker import TRIAL_LOG, run_trial

    study = tmp_path / "study"
    (study / "trials" / "earlier").mkdir(parents=True)  # another trial's folder: untouched
    (study / "trials" / "earlier" / "results.json").write_text("{}")
    recipe = load_recipe("breastmnist", ["teacher.epochs=1"]).model_dump(mode="json")
    job = {"dir": str(study / "trials" / "a-seed0"), "recipe": recipe, "data_root": str(tmp_path / "no-data"),
           "store": str(study / "store")}
    outcome = run_trial(job)
    assert outcome["status"] == "failed" and "breastmnist.npz: not found" in outcome["error"]
    trial = study / "trials" / "a-seed0"
    # only the log of why it failed: no models/, stages/, logs/ ..., no marker, lock or resolved recipe
    assert sorted(p.name for p in trial.iterdir()) == [TRIAL_LOG]
    assert "trial failed" in (trial / TRIAL_LOG).read_text()
    assert (study / "trials" / "earlier" / "results.json").is_file()


def test_failed_tune_trial_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    pytest.importorskip("optuna")
    from medlite.study.tune import tune

    out = tmp_path / "tune"
    with pytest.raises(Exception):
        tune("breastmnist", out, tmp_path / "no-data", overrides=["teacher.epochs=1", "student.epochs=1"],
             max_trials=1, say=lambda _: None)
    # the trial folder (and the trials/ folder it created) is gone; the tune folder keeps only its store
    assert not (out / "trials").exists(), _tree(out)
