"""End to end on real BreastMNIST with a tiny recipe: variants, results.json contract, resume."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlite.recipe import load_recipe
from medlite.runstate import MARKER, RESOLVED_RECIPE

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
    """One tiny run, shared read-only; tests that rerun or damage it work on their own copy (own_copy)."""
    out = tmp_path_factory.mktemp("run")
    results, lines = run(out, data_root)
    return out, results, lines


def own_copy(first_run, tmp_path: Path) -> Path:
    """A private copy of the shared run: every test passes alone and in any order."""
    return Path(shutil.copytree(first_run[0], tmp_path / "run", symlinks=True))


def test_run_directory_contract(first_run):
    out, results, _ = first_run
    for name in (RESOLVED_RECIPE, MARKER, "results.json", "report.html", "environment.json"):
        assert (out / name).is_file(), name
    for folder in ("models", "logs", "checkpoints"):
        assert (out / folder).is_dir()
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    resolved = load_recipe(str(out / RESOLVED_RECIPE))
    assert resolved.teacher.epochs == 2 and resolved.student.arch == "medlite_dsconv_tiny"
    assert "torch" in results["versions"] and "onnxruntime" in results["versions"]
    assert not list(out.rglob("*tmp"))


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


def test_rerun_resumes_and_key_change_reruns_downstream(first_run, data_root, tmp_path):
    _, results, _ = first_run
    out = own_copy(first_run, tmp_path)
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


def test_damaged_artifact_is_not_trusted(first_run, data_root, tmp_path):
    out = own_copy(first_run, tmp_path)
    onnx_file = out / "models" / "student_kd.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])  # as if a copy was cut short
    results, _ = run(out, data_root)
    # Same recipe: the training is reused, the damaged export is not (and only it is redone).
    assert {"teacher", "student_scratch", "student_kd", "teacher.export"} <= set(results["cached_stages"])
    assert "student_kd.export" not in results["cached_stages"]
    import onnx

    onnx.checker.check_model(str(onnx_file))


def test_fresh_starts_over(first_run, data_root, tmp_path):
    out = own_copy(first_run, tmp_path)
    results, _ = run(out, data_root, fresh=True)
    assert results["cached_stages"] == []


# -- compression, benchmark and the edge runner, end to end --------------------------------

COMPRESS = TINY[:-2] + [
    "compress.methods=[prune_structured,prune_unstructured,int8_dynamic,int8_static,int8_qat]",
    "compress.prune_structured.epochs=1",
    "compress.prune_unstructured.epochs=1",
    "compress.int8_qat.epochs=1",
    "compress.int8_static.calibration_images=32",
    "compress.int8_qat.calibration_images=32",
    "bench.enabled=true",
    "bench.threads=[1]",
    "bench.warmup=1",
    "bench.iterations=5",
    "bench.time_budget_s=0.3",
    "bench.throughput_batch=4",
    # The eager references, the per-layer views and the explanations have tests of their own (test_bench,
    # test_layers, test_explain): here they would triple the time of this run.
    "bench.reference=false",
    "bench.layers=false",
    "explain.enabled=false",
    "teacher.arch=medlite_dsconv_wide",  # the default recipe's teacher: every compression method on it
]


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory, data_root):
    from medlite.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("compressed")
    recipe = load_recipe("breastmnist", COMPRESS)
    return out, run_pipeline(recipe, out, data_root, say=lambda line: None, progress=False)


def test_compression_variants_and_lineage(compressed_run):
    out, results = compressed_run
    variants = {v["name"]: v for v in results["variants"]}
    for base in ("teacher", "student_kd"):
        for suffix, parent, fmt in [
            ("_pruned", base, "onnx-fp32"),
            ("_pruned_int8_static", f"{base}_pruned", "onnx-int8-qdq"),
            ("_sparse", base, "onnx-fp32"),
            ("_int8_dynamic", base, "onnx-int8-dynamic"),
            ("_int8_static", base, "onnx-int8-qdq"),
            ("_int8_qat", base, "onnx-int8-qdq"),
        ]:
            v = variants[base + suffix]
            assert v["parent"] == parent and v["format"] == fmt, v["name"]
            assert (out / v["file"]).is_file()
            for key in ("params", "nonzero_params", "macs", "file_bytes", "gzip_bytes", "sparsity"):
                assert v[key] is not None, (v["name"], key)
            assert "auc" in v["metrics"]
        assert variants[f"{base}_pruned"]["macs"] < variants[base]["macs"]
        assert variants[f"{base}_pruned"]["params"] < variants[base]["params"]
        assert variants[f"{base}_int8_static"]["file_bytes"] < variants[base]["file_bytes"]
        sparse = variants[f"{base}_sparse"]
        assert sparse["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert sparse["gzip_bytes"] < variants[base]["gzip_bytes"]
        assert sparse["file_bytes"] == pytest.approx(variants[base]["file_bytes"], rel=0.01)


def test_every_variant_has_a_bench_object(compressed_run):
    out, results = compressed_run
    for v in results["variants"]:
        bench = v["bench"]
        assert bench["latency_ms"]["p50"] > 0 and bench["latency_ms"]["p50"] <= bench["latency_ms"]["p99"]
        for key in ("load_ms", "prep_ms", "peak_rss_mb", "threads"):
            assert bench[key] is not None, (v["name"], key)
        assert "reference" not in bench  # bench.reference=false: no eager timing asked for, none made
    assert (out / "bench.json").is_file()
    assert "bench" in results["timings"]


def test_edge_runner_matches_pipeline_predictions(compressed_run, data_root):
    """The deployable runner (no torch) gives the pipeline's probabilities for the same images."""
    import subprocess
    import sys

    from medlite.data import load_dataset
    from medlite.evaluate import predict_artifact

    out, results = compressed_run
    model = out / "models" / "student_kd_int8_static.onnx"
    edge = subprocess.run([sys.executable, "-m", "medlite.edge", str(model), str(out / "samples")],
                          capture_output=True, text=True, check=True)
    report = json.loads(edge.stdout)
    recipe = load_recipe("breastmnist", COMPRESS)
    ds = load_dataset(recipe.data, data_root, recipe.seed)
    probs = predict_artifact(model, ds.splits["test"].images, ds.preprocess)
    assert len(report["images"]) >= 2
    for image in report["images"]:
        index = int(Path(image["path"]).stem.rsplit("_", 1)[1])
        edge_probs = [image["probabilities"][name] for name in ds.class_names]
        assert np.allclose(edge_probs, probs[index], atol=1e-6)
        assert image["argmax_class"] == ds.class_names[int(probs[index].argmax())]
        # the decision uses the operating point the pipeline stored in the file (chosen on validation)
        op = next(v for v in results["variants"] if v["name"] == "student_kd_int8_static")["metrics"]["operating_point"]
        assert report["operating_point"]["threshold"] == pytest.approx(op["threshold"])
        positive = probs[index][op["positive_index"]] >= op["threshold"]
        assert (image["class_index"] == op["positive_index"]) == positive


def test_bad_compression_target_fails_before_training(tmp_path, data_root):
    from medlite.errors import UsageError
    from medlite.pipeline import run_pipeline

    recipe = load_recipe("breastmnist", TINY + ["compress.methods=[int8_static]", "compress.targets=[studnet_kd]"])
    with pytest.raises(UsageError, match="studnet_kd"):
        run_pipeline(recipe, tmp_path, data_root, say=lambda line: None, progress=False)
    assert not (tmp_path / "checkpoints" / "teacher.safetensors").exists()


def test_compression_failure_keeps_made_variants(tmp_path, data_root, monkeypatch):
    """A method that cannot run exits with its cause, and the variants made before it are kept."""
    from medlite.compress import quantize
    from medlite.errors import UsageError
    from medlite.pipeline import run_pipeline

    def cannot(*args, **kwargs):
        raise UsageError("int8_static: model cannot be quantized (test)")

    monkeypatch.setattr(quantize, "quantize_static", cannot)
    recipe = load_recipe("breastmnist", TINY + ["compress.methods=[int8_dynamic,int8_static]", "compress.targets=[student_kd]"])
    with pytest.raises(UsageError, match="cannot be quantized"):
        run_pipeline(recipe, tmp_path, data_root, say=lambda line: None, progress=False)
    kept = json.loads((tmp_path / "results.json").read_text())
    names = [v["name"] for v in kept["variants"]]
    assert "student_kd_int8_dynamic" in names and "student_kd_int8_static" not in names
    assert all("auc" in v["metrics"] for v in kept["variants"])


def test_compressed_rerun_reuses_every_stage(compressed_run, data_root):
    from medlite.pipeline import run_pipeline

    out, results = compressed_run
    again = run_pipeline(load_recipe("breastmnist", COMPRESS), out, data_root, say=lambda line: None, progress=False)
    made = {v["name"] for v in results["variants"]}
    assert made <= set(again["cached_stages"])
    assert "bench" in again["cached_stages"]
    assert [v["metrics"]["auc"] for v in again["variants"]] == [v["metrics"]["auc"] for v in results["variants"]]


def test_the_scratch_baseline_is_fair_and_says_how_it_was_trained(first_run):
    """Issue 21: student_scratch trains on live augmentation at the distilled student's budget; every
    trained variant records its views, epochs, optimizer and teachers."""
    _, results, _ = first_run
    variants = {v["name"]: v for v in results["variants"]}
    scratch, kd = variants["student_scratch"]["training"], variants["student_kd"]["training"]
    assert scratch["views"] == "live" and scratch["teachers"] == [] and scratch["method"] is None
    # the default recipe's function matching: the teacher live, mixup for both students (the same budget)
    assert kd["views"] == "live" and kd["teachers"] == ["teacher"] and kd["method"] == "kd" and kd["mixup"] == 0.2
    for key in ("epochs", "optimizer", "image_size", "mixup"):
        assert scratch[key] == kd[key], key
    assert "student_scratch_bank" not in variants  # the fixed-view control only when asked for


def test_dry_run_plans_the_graph_and_writes_nothing(first_run, tmp_path, data_root):
    """`medlite run --dry-run`: every stage with reuse/run; a changed setting replans only what it feeds."""
    from medlite.pipeline import dry_run

    out = own_copy(first_run, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    lines: list[str] = []
    plan = dry_run(load_recipe("breastmnist", TINY), out, data_root, say=lines.append)
    assert {p.action for p in plan} == {"reuse"} and {"teacher", "student_kd.evaluate", "bench"} - {p.name for p in plan} == {"bench"}
    assert any("would be reused, 0 run" in line for line in lines)
    changed = {p.name: p.action for p in dry_run(load_recipe("breastmnist", TINY + ["student.epochs=3"]), out, data_root,
                                                 say=lambda _: None)}
    assert changed["teacher"] == changed["teacher.export"] == "reuse"
    assert changed["student_kd"] == changed["student_kd.export"] == changed["student_kd.evaluate"] == "run"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    fresh = dry_run(load_recipe("breastmnist", TINY), tmp_path / "new", data_root, say=lambda _: None)
    assert {p.action for p in fresh} == {"run"} and not (tmp_path / "new").exists()


def test_duplicates_and_training_hashes_are_kept(first_run):
    """Issue 16: copies across splits are reported, and the training images' hashes kept with the models."""
    from medlite.data.duplicates import load_hashes

    out, results, _ = first_run
    hashes = load_hashes(out / "models" / "train_hashes.npy")
    assert len(hashes) == results["dataset"]["images"]["train"] and hashes.dtype == np.uint64
    counts = results["duplicates"]["counts"]
    assert set(counts) == {"train/val", "train/test", "val/test"}
    with_copy = counts["train/test"]["images_b_with_copy"]
    assert (with_copy > 0) == any("test images have an exact or near copy in train" in w
                                  for w in results["dataset"]["warnings"])
