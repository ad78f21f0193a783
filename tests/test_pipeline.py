"""End to end on real BreastMNIST with a tiny recipe: variants, results.json contract, resume."""

import json
import os

import numpy as np
import pytest

from medlite.recipe import load_recipe

TINY = [
    "data.limit=64",
    "teacher.arch=medlite_cnn_tiny",
    "teacher.epochs=2",
    "student.arch=medlite_dsconv_tiny",
    "student.epochs=2",
    "evaluate.bootstrap=50",
    "compress.methods=[]",
    "bench.enabled=false",
]


def run(out, data_root, overrides=(), fresh=False):
    from medlite.pipeline import run_pipeline

    lines = []
    recipe = load_recipe("breastmnist", TINY + list(overrides))
    results = run_pipeline(recipe, out, data_root, fresh=fresh, say=lines.append, progress=False)
    return results, lines


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("run")
    results, lines = run(out, data_root)
    return out, results, lines


def test_run_directory_contract(first_run):
    out, results, _ = first_run
    for name in ("recipe.yaml", "results.json", "report.html", "environment.json"):
        assert (out / name).is_file(), name
    for folder in ("models", "logs", "checkpoints"):
        assert (out / folder).is_dir()
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    resolved = load_recipe(str(out / "recipe.yaml"))
    assert resolved.teacher.epochs == 2 and resolved.student.arch == "medlite_dsconv_tiny"
    assert "torch" in results["versions"] and "onnxruntime" in results["versions"]
    assert not list(out.rglob("*.tmp"))


def test_variants_and_metrics_from_onnx(first_run, data_root):
    out, results, _ = first_run
    names = [v["name"] for v in results["variants"]]
    assert names == ["teacher", "student_scratch", "student_kd"]
    kd = results["variants"][2]
    assert kd["parent"] == "teacher" and kd["stage"] == "distill" and kd["format"] == "onnx-fp32"
    for v in results["variants"]:
        onnx_path = out / v["file"]
        assert onnx_path.is_file() and v["file_bytes"] == os.path.getsize(onnx_path)
        assert v["export"]["max_abs_diff"] < 1e-3
        m = v["metrics"]
        for key in ("accuracy", "balanced_accuracy", "auc", "f1_macro", "ece", "confusion_matrix", "per_class", "ci"):
            assert key in m
        assert 0 <= m["accuracy"] <= 1 and m["n"] == 64
        assert np.sum(m["confusion_matrix"]) == 64
    # the metrics are those of the ONNX file: recompute independently and compare
    from medlite.data import load_dataset
    from medlite.evaluate import predict_artifact

    recipe = load_recipe("breastmnist", TINY)
    ds = load_dataset(recipe.data, data_root, recipe.seed)
    probs = predict_artifact(out / kd["file"], ds.splits["test"].images, ds.preprocess)
    assert (probs.argmax(1) == ds.splits["test"].labels).mean() == pytest.approx(kd["metrics"]["accuracy"])
    assert results["dataset"]["images"] == {"train": 64, "val": 64, "test": 64}
    assert "teacher" in results["timings"] and results["timings"]["total"] > 0
    train = results["variants"][0]["train"]
    assert len(train["epoch_seconds"]) == 2 and 0 <= train["best_epoch"] < 2


def test_logs_written_per_epoch(first_run):
    out, _, _ = first_run
    metrics_csv = out / "logs" / "teacher" / "metrics.csv"
    assert metrics_csv.is_file()
    text = metrics_csv.read_text()
    assert "val_auc" in text and "lr-" in text and "epoch_time" in text
    assert list((out / "logs" / "teacher").glob("events.out.tfevents*"))


def test_rerun_resumes_and_key_change_reruns_downstream(first_run, data_root):
    out, results, _ = first_run
    checkpoint = out / "checkpoints" / "teacher.safetensors"
    before = checkpoint.stat().st_mtime_ns
    again, lines = run(out, data_root)
    assert checkpoint.stat().st_mtime_ns == before
    assert {"teacher", "student_scratch", "student_kd"} <= set(again["cached_stages"])
    assert [v["metrics"]["auc"] for v in again["variants"]] == [v["metrics"]["auc"] for v in results["variants"]]
    # A student key changes: the students retrain, the teacher does not.
    changed, lines = run(out, data_root, ["student.lr=0.001"])
    assert checkpoint.stat().st_mtime_ns == before
    assert "teacher" in changed["cached_stages"]
    assert "student_kd" not in changed["cached_stages"] and "student_scratch" not in changed["cached_stages"]
    assert any("retraining" in line for line in lines)


def test_damaged_artifact_is_not_trusted(first_run, data_root):
    out, _, _ = first_run
    onnx_file = out / "models" / "student_kd.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])  # as if a copy was cut short
    results, _ = run(out, data_root, ["student.lr=0.001"])
    assert "student_kd.export" not in results["cached_stages"]
    import onnx

    onnx.checker.check_model(str(onnx_file))


def test_fresh_starts_over(first_run, data_root):
    out, _, _ = first_run
    results, _ = run(out, data_root, fresh=True)
    assert results["cached_stages"] == []
