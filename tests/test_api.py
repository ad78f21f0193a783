"""The Python API (`medlite.run`, `medlite.load`, `medlite.study`) and the example notebook, run for real."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import medlite
from medlite.api import _override_list

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_from_a_mapping_read_back_as_the_recipe_would():
    from medlite.recipe import load_recipe

    items = _override_list({"student.epochs": 2, "compress.methods": [], "distill.temperature": 2.5,
                            "teacher.arch": "medlite_cnn_tiny", "bench.enabled": False})
    recipe = load_recipe("breastmnist", items)
    assert (recipe.student.epochs, recipe.compress.methods, recipe.distill.temperature) == (2, [], 2.5)
    assert recipe.teacher.arch == "medlite_cnn_tiny" and recipe.bench.enabled is False
    assert _override_list(["a.b=1"]) == ["a.b=1"] and _override_list(None) == []
    with pytest.raises(medlite.UsageError, match="mapping or a list"):
        _override_list("student.epochs=2")


def test_errors_are_the_command_lines_one_line_exceptions(tmp_path):
    with pytest.raises(medlite.UsageError, match="student.epoch"):
        medlite.run("breastmnist", out=tmp_path / "r", overrides={"student.epoch": 3}, data_root=tmp_path, say=None)
    with pytest.raises(medlite.UsageError, match="results.json"):
        medlite.load(tmp_path)
    with pytest.raises(medlite.UsageError, match="--split"):
        medlite.evaluate_external(tmp_path, "breastmnist", split="holdout", data_root=tmp_path)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_importing_medlite_stays_light():
    import subprocess
    import sys

    code = "import medlite, sys; medlite.run; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_example_notebook_runs(tmp_path, data_root, monkeypatch):
    """examples/quickstart.ipynb, executed in a real kernel (nbclient), on the real BreastMNIST file."""
    import nbformat
    from nbclient import NotebookClient

    shutil.copy(ROOT / "examples" / "quickstart.ipynb", tmp_path / "quickstart.ipynb")
    notebook = nbformat.read(tmp_path / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("MEDLITE_DATA_ROOT", str(data_root))  # the kernel inherits it
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))
               for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "student_kd_int8_static" in text and "UsageError: " in text and "student.epoch" in text
    assert "validation" in text  # the deployed file's rule names the split that chose it
    run = medlite.load(tmp_path / "runs" / "notebook")
    table = run.to_pandas()
    assert {"teacher", "student_scratch", "student_kd", "student_kd_int8_static"} <= set(table["name"])
    assert table.loc[table["name"] == "student_kd_int8_static", "auc"].notna().all()
    assert run.lineage("student_kd_int8_static")[0] == "student_kd"
    # medlite.evaluate: the deployed file on PneumoniaMNIST, its figures the evaluation.json's
    import json

    written = json.loads((tmp_path / "runs" / "notebook-external" / "evaluation.json").read_text())
    assert written["model"]["variant"] == run.deployed()["variant"] and written["data"]["name"].startswith("pneumoniamnist")
    assert f"AUC {written['metrics']['argmax']['auc']:.3f}" in text
