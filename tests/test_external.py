"""External validation (`medlite evaluate`) and the run's variant listing (`medlite models`), on a
tiny BreastMNIST run (made once for the module) tested on the real BUSI folder and MedMNIST file."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medlite.errors import UsageError

TINY = [
    "data.limit=64",
    "teacher.arch=medlite_cnn_tiny",
    "teacher.epochs=2",
    "student.arch=medlite_dsconv_tiny",
    "student.epochs=2",
    "distill.scratch_baseline=false",
    "evaluate.bootstrap=20",
    "compress.methods=[int8_dynamic]",
    "compress.targets=[student_kd]",
    "bench.enabled=false",
    "explain.enabled=false",
]
# BUSI's three folders onto BreastMNIST's two classes ('malignant', 'normal, benign' in medmnist's info.py).
BUSI_MAP = ["--class-map", "benign=normal, benign", "--class-map", "normal=normal, benign"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root) -> Path:
    from medlite.pipeline import run_pipeline
    from medlite.recipe import load_recipe

    out = tmp_path_factory.mktemp("extval") / "run"
    run_pipeline(load_recipe("breastmnist", TINY), out, data_root, say=lambda line: None, progress=False)
    return out


def medlite(monkeypatch, capsys, *args):
    """medlite.cli.main() in this process: exit code, stdout, stderr."""
    from medlite import cli

    monkeypatch.setattr(sys, "argv", ["medlite", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
        raise SystemExit(0)  # main() returns normally on success
    out, err = capsys.readouterr()
    code = info.value.code if isinstance(info.value.code, int) else (0 if info.value.code is None else 1)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def one_line_error(result, *fragments) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_run_on_busi_with_class_map_writes_metrics_predictions_and_page(tiny_run, data_root, busi_root, tmp_path,
                                                                       monkeypatch, capsys):
    from medlite.deploy.select import choose_variant
    from medlite.runtime import open_artifact

    out = tmp_path / "ev"
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run, busi_root, *BUSI_MAP, "--bootstrap", 50,
                     "--out", out, "--data-root", data_root, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "evaluation.json").read_text())
    # the model is the file predict would deploy, with its stored operating point
    path, variant, rule = choose_variant(tiny_run)
    assert doc["model"]["variant"] == variant["name"] and doc["model"]["selection"] == rule
    art = open_artifact(path)
    op = doc["metrics"]["operating_point"]
    assert op["threshold"] == art.operating_point["threshold"] and op["positive_class"] == "malignant"
    for part in ("at_threshold", "argmax"):
        assert set(op[part]["ci"]) == {"sensitivity", "specificity"}
    # metrics with intervals at argmax, calibration, per class
    argmax = doc["metrics"]["argmax"]
    assert set(argmax["ci"]) == {"accuracy", "auc"} and 0 <= argmax["ece"] <= 1
    assert set(argmax["per_class"]) == {"malignant", "normal, benign"}
    data = doc["data"]
    assert data["class_map"] == {"benign": "normal, benign", "malignant": "malignant", "normal": "normal, benign"}
    assert data["split"] == "test" and data["n_images"] == sum(data["per_class"].values()) == argmax["n"]
    # BUSI ultrasound images are not among the BreastMNIST images the model was trained on
    assert doc["seen_in_training"]["count"] == 0 and doc["seen_in_training"]["of"] == doc["data"]["n_images"]
    # predictions name each image by its file, and follow the stored decision rule
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == data["n_images"]
    assert all((busi_root / r["image"]).is_file() for r in rows)
    assert {r["data_class"] for r in rows} == {"benign", "malignant", "normal"}
    assert all(r["true_label"] == ("malignant" if r["data_class"] == "malignant" else "normal, benign") for r in rows)
    for r in rows:
        expected = "malignant" if float(r["prob_malignant"]) >= op["threshold"] else "normal, benign"
        assert r["operating_point_label"] == expected
    # one self-contained page: the figure embedded, nothing fetched from elsewhere
    page = (out / "evaluation.html").read_text()
    assert "data:image/png;base64," in page and "AUC" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    assert (out / "figures" / "variant_external.png").is_file()


def test_model_file_on_a_medmnist_flag_every_split(tiny_run, data_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ev"
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run / "models" / "teacher.onnx", "breastmnist",
                     "--split", "all", "--bootstrap", 0, "--out", out, "--data-root", data_root)
    assert result.returncode == 0, result.stderr
    assert "AUC" in result.stdout and "seen in training: " in result.stdout
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["data"]["n_images"] == 546 + 78 + 156  # every official split of BreastMNIST
    # The run kept its training images' hashes beside its files: every one of them is among these images.
    from medlite.data.duplicates import load_hashes

    trained_on = load_hashes(tiny_run / "models" / "train_hashes.npy")
    seen = doc["seen_in_training"]
    assert seen["count"] == len(seen["files"]) >= len(trained_on) > 0 and seen["of"] == doc["data"]["n_images"]
    assert doc["data"]["read_as"].startswith("built-in recipe") and doc["model"]["variant"] is None
    with open(out / "predictions.csv", newline="") as handle:
        assert {r["split"] for r in csv.DictReader(handle)} == {"train", "val", "test"}


def test_unmappable_class_exits_2_naming_it(tiny_run, data_root, busi_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ev"
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run, busi_root, "--class-map", "benign=normal, benign",
                     "--out", out, "--data-root", data_root)
    one_line_error(result, "'normal'", "not among the model's classes", "--class-map")
    assert not out.exists()  # refused before anything was written
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run, busi_root, *BUSI_MAP, "--class-map", "cyst=malignant",
                     "--out", out, "--data-root", data_root)
    one_line_error(result, "'cyst'", "not a class of")
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run, busi_root, "--class-map", "benign=benign",
                     "--out", out, "--data-root", data_root)
    one_line_error(result, "'benign'", "not a class of the model")


def test_colour_images_for_a_grey_model_are_refused(tiny_run, data_root, folders_root, tmp_path, monkeypatch, capsys):
    # Real HAM10000 dermoscopy (colour) images under the model's own class names: only the channels are wrong.
    root = tmp_path / "colour"
    for dx, name in (("mel", "malignant"), ("nv", "normal, benign")):
        (root / name).mkdir(parents=True)
        for image in sorted((folders_root / "HAM10000" / dx).iterdir())[:6]:
            shutil.copy(image, root / name / image.name)
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run, root, "--split", "all", "--out", tmp_path / "ev",
                     "--data-root", data_root)
    one_line_error(result, str(root), "are colour", "1-channel", "cannot be mapped")


def test_bad_inputs_exit_2(tiny_run, data_root, busi_root, tmp_path, monkeypatch, capsys):
    from medlite.evaluate.external import default_out, parse_class_map

    with pytest.raises(UsageError, match="expected SRC=DST"):
        parse_class_map(["benign"])
    assert parse_class_map(["a=b=c", " x = y "]) == {"a": "b=c", "x": "y"}
    assert default_out(Path("somewhere/run1.onnx"), "BUSI") == Path("runs/evaluate-run1-BUSI")
    one_line_error(medlite(monkeypatch, capsys, "evaluate", tiny_run, "no_such_dataset", "--data-root", data_root),
                   "'no_such_dataset'", "MedMNIST flag")
    one_line_error(medlite(monkeypatch, capsys, "evaluate", tiny_run, busi_root, *BUSI_MAP, "--split", "dev",
                           "--data-root", data_root), "--split 'dev'")
    one_line_error(medlite(monkeypatch, capsys, "evaluate", tiny_run, busi_root, *BUSI_MAP, "--out", tiny_run,
                           "--data-root", data_root), "a run directory")
    one_line_error(medlite(monkeypatch, capsys, "evaluate", tmp_path / "none.onnx", busi_root,
                           "--data-root", data_root), "none.onnx")


def test_models_lists_every_variant_and_the_deploy_choice(tiny_run, monkeypatch, capsys):
    from medlite.deploy.select import choose_variant

    _, chosen, rule = choose_variant(tiny_run)
    results = json.loads((tiny_run / "results.json").read_text())
    result = medlite(monkeypatch, capsys, "models", tiny_run, "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [v["name"] for v in listing["variants"]] == [v["name"] for v in results["variants"]]
    assert [v["name"] for v in listing["variants"] if v["deployed"]] == [chosen["name"]]
    assert listing["deploy"] == {"variant": chosen["name"], "file": chosen["file"], "rule": rule}
    for row, v in zip(listing["variants"], results["variants"]):
        assert row["file"] == v["file"] and row["file_bytes"] == v["file_bytes"] and row["runtime"] == "onnxruntime"
        assert row["test_auc"] == v["metrics"]["auc"] and row["val_auc"] == v["val_metrics"]["auc"]
        assert row["warnings"] == v["warnings"]
    table = medlite(monkeypatch, capsys, "models", tiny_run)
    assert table.returncode == 0 and f"predict would deploy: {chosen['name']}" in table.stdout
    assert all(v["name"] in table.stdout for v in results["variants"])
    one_line_error(medlite(monkeypatch, capsys, "models", tiny_run / "models"), "not a run directory")


def test_recipe_yaml_with_a_label_table(tiny_run, data_root, busi_root, tmp_path, monkeypatch, capsys):
    # A table recipe's validated data section is used as it is (dumping and re-validating it fails:
    # its defaults count as given), with only the model's input size and channels changed.
    table = tmp_path / "busi.csv"
    lines = ["path,finding"] + [f"{d.name}/{p.name},{d.name}" for d in sorted(busi_root.iterdir())
                                for p in sorted(d.iterdir())[:12]]
    table.write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "external.yaml"
    recipe.write_text(f"data: {{source: table, table: {table}, root: {busi_root}, image: path, label: finding}}\n")
    out = tmp_path / "ev"
    result = medlite(monkeypatch, capsys, "evaluate", tiny_run, recipe, *BUSI_MAP, "--split", "all", "--bootstrap", 0,
                     "--out", out, "--data-root", data_root)
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["data"]["source"] == "table" and doc["data"]["n_images"] == 36
    assert doc["data"]["section"]["image_size"] == 28 and doc["data"]["per_class"] == {"malignant": 12, "normal, benign": 24}


def test_commands_are_listed_with_debug(monkeypatch, capsys):
    listing = medlite(monkeypatch, capsys, "--help")
    assert listing.returncode == 0 and "evaluate" in listing.stdout and "models" in listing.stdout
    for command in ("evaluate", "models"):
        shown = medlite(monkeypatch, capsys, command, "--help")
        assert shown.returncode == 0 and "--debug" in shown.stdout, command
