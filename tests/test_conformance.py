"""Conformance grid generated from the registries (scikit-learn's `estimator_checks` style).

One tiny run applies every registered compression method to the teacher and the distilled student
and exports to every registered format; then every consumer (evaluate, predict, bench with its
eager reference, explain, serve, the edge runner) is checked on every variant. A newly registered
method or format is checked everywhere by registering it: the parameters below come from the
registries, not from a hand-kept list.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from medlite.compress import registry as compress_registry
from medlite.export import registry as export_registry
from medlite.recipe import load_recipe

pytestmark = pytest.mark.slow

TARGETS = ["teacher", "student_kd"]


def _ready_formats() -> list[str]:
    """Every registered format whose packages are installed (a missing one is reported, see below)."""
    return [name for name, fmt in export_registry.FORMATS.items() if not fmt.missing_packages()]


FORMATS = _ready_formats()
METHODS = list(compress_registry.METHODS)
LITERT_MODES = ["fp32", "int8_dynamic", "int8_static", "fp16"]  # every LiteRT file medlite can make


def grid_recipe():
    return load_recipe("breastmnist", [
        "data.limit=48", "teacher.arch=medlite_cnn_tiny", "teacher.epochs=1", "student.arch=medlite_dsconv_tiny",
        "student.epochs=1", "distill.scratch_baseline=false", "evaluate.bootstrap=20", f"compress.targets=[{','.join(TARGETS)}]",
        f"compress.methods=[{','.join(METHODS)}]", "compress.chains=[]",
        "compress.prune_structured.epochs=1", "compress.prune_unstructured.epochs=1", "compress.int8_qat.epochs=1",
        "compress.int8_static.calibration_images=16", "compress.int8_qat.calibration_images=16",
        f"export.formats=[{','.join(FORMATS)}]", f"export.litert.quantize=[{','.join(LITERT_MODES)}]",
        "export.litert.calibration_images=16",
        "bench.enabled=true", "bench.threads=[1]", "bench.warmup=1", "bench.iterations=3", "bench.time_budget_s=0.2",
        "bench.throughput_batch=2", "explain.images_per_class=1", "explain.methods=[occlusion,gradcam]",
    ])


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, data_root):
    from medlite.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("grid")
    results = run_pipeline(grid_recipe(), out, data_root, say=lambda line: None, progress=False)
    return out, results, {v["name"]: v for v in results["variants"]}


def expected_variants() -> list[tuple[str, str, str]]:
    """(variant name, method or '-', format) for every cell of the grid, from the registries."""
    cells = [(target, "-", "onnx") for target in TARGETS]
    for target in TARGETS:
        for method in compress_registry.METHODS:
            cells.append((target + compress_registry.METHODS[method].suffix, method, "onnx"))
        if "litert" in FORMATS:
            cells += [(f"{target}_tflite_{mode}", "-", "litert") for mode in LITERT_MODES]
    return cells


CELLS = expected_variants()
IDS = [f"{name}[{fmt}]" for name, _, fmt in CELLS]


def _variant(grid_run, name: str) -> dict:
    out, results, variants = grid_run
    if name not in variants:
        # A method may rename what it made when it is not what its name promises (int8_dynamic_dense).
        renamed = [v for v in variants if v.startswith(name + "_")]
        skipped = [s for s in results["skipped"] if s["name"] == name]
        assert renamed or skipped, f"{name}: neither made nor skipped with a reason"
        if skipped:
            pytest.fail(f"{name}: skipped: {skipped[0]['reason']}")
        return variants[renamed[0]]
    return variants[name]


def test_every_registered_format_is_ready():
    """LiteRT and every other registered format must be installed where the suite runs (make test installs them)."""
    import os

    missing = {name: fmt.missing_packages() for name, fmt in export_registry.FORMATS.items() if fmt.missing_packages()}
    if missing:
        message = f"formats not installed here, their cells are not checked: {missing}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI=true: make test installs them)", pytrace=False)
        pytest.skip(message)


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_evaluate_measures_the_deployed_file(grid_run, name, method, fmt):
    from medlite.evaluate.predictions import read_predictions
    from medlite.runtime import open_artifact

    out, _, _ = grid_run
    v = _variant(grid_run, name)
    assert v["runtime"] == export_registry.get(fmt).runtime
    assert np.isfinite(v["metrics"]["auc"]) and v["file_bytes"] > 0
    _, labels, probs, _ = read_predictions(out / v["metrics"]["predictions"])
    art = open_artifact(out / v["file"], runtime=v["runtime"])
    samples = sorted((out / "samples").glob("*.png"))
    assert samples
    assert probs.shape == (len(labels), len(art.class_names))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_bench_times_every_variant_and_the_eager_reference(grid_run, name, method, fmt):
    v = _variant(grid_run, name)
    bench = v["bench"]
    assert bench and "error" not in bench and "skipped" not in bench, f"{v['name']}: {bench}"
    assert bench["primary"] in bench
    if v.get("checkpoint"):  # a PyTorch model behind it: the eager reference is timed too (pruned ones included)
        reference = bench.get("reference")
        assert reference and "error" not in reference, f"{v['name']}: no PyTorch eager reference: {reference}"


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_every_variant_has_a_per_layer_view(grid_run, name, method, fmt):
    out, _, _ = grid_run
    v = _variant(grid_run, name)
    summary = v["bench"]["layers"]
    assert "error" not in summary, f"{v['name']}: {summary}"
    view = json.loads((out / summary["file"]).read_text())
    assert view["layers"] and view["totals"]["macs"] > 0 and view["totals"]["param_bytes"] > 0
    if view["latency"]["available"]:
        shares = [l["share"] for l in view["layers"]] + [r["share"] for r in view["inserted"]]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    else:
        assert "not available" in view["latency"]["reason"]
    if "int8" in (v["format"] or "") and not v["name"].endswith("_dense"):
        assert view["totals"]["int8_layers"] > 0, f"{v['name']}: no layer reported int8"


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_explain_runs_in_the_variants_own_runtime(grid_run, name, method, fmt):
    v = _variant(grid_run, name)
    occlusion = v["explain"]["methods"]["occlusion"]
    assert "skipped" not in occlusion, occlusion
    assert occlusion["runs_on"] == v["runtime"]
    assert 0.0 <= occlusion["deletion_auc"] <= 1.0


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_predict_on_the_run_samples(grid_run, name, method, fmt):
    from medlite.deploy.predict import predict_files

    out, _, _ = grid_run
    v = _variant(grid_run, name)
    samples = sorted((out / "samples").glob("*.png"))
    result = predict_files(out / v["file"], samples, runtime=v["runtime"], threads=1)
    assert len(result["predictions"]) == len(samples) and not result["unreadable"]


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_serve_answers_with_the_deployed_file(grid_run, name, method, fmt):
    """The server's probabilities are the deployed file's, as `predict` computes them."""
    from fastapi.testclient import TestClient

    from medlite.deploy.predict import predict_files
    from medlite.deploy.serve import create_app

    out, _, _ = grid_run
    v = _variant(grid_run, name)
    sample = sorted((out / "samples").glob("*.png"))[0]
    client = TestClient(create_app(out / v["file"], runtime=v["runtime"], threads=1))
    reply = client.post("/predict", files={"file": (sample.name, sample.read_bytes(), "image/png")})
    assert reply.status_code == 200, reply.text
    served = reply.json()["results"][0]["probabilities"]
    expected = predict_files(out / v["file"], [sample], runtime=v["runtime"], threads=1)["predictions"][0]
    classes = sorted(served)
    np.testing.assert_allclose([served[c] for c in classes], [expected["probabilities"][c] for c in classes], atol=2e-6)


@pytest.mark.parametrize("name,method,fmt", CELLS, ids=IDS)
def test_edge_runner_classifies_the_samples(grid_run, name, method, fmt):
    from medlite import edge

    out, _, _ = grid_run
    v = _variant(grid_run, name)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = edge.main([str(out / v["file"]), str(out / "samples"), "--threads", "1"])
    assert code == 0
    report = json.loads(buffer.getvalue())
    assert report["summary"]["count"] == len(list((out / "samples").glob("*.png")))


def test_a_registered_method_is_checked_by_the_grid_without_other_changes(monkeypatch):
    """Registering a method (config model + spec) is all it takes for recipes to accept it and for
    this grid to include it."""
    from pydantic import Field

    from medlite.compress.registry import ONNX_FP32, MethodSpec
    from medlite.config_base import Strict

    class CopyConfig(Strict):
        note: str = Field("x")

    spec = MethodSpec("copy_test", "_copy", frozenset({ONNX_FP32}), frozenset({ONNX_FP32}), "tests.plugin:stage",
                      config="copy_test", config_model=CopyConfig)
    compress_registry.register(spec)
    try:
        recipe = load_recipe("breastmnist", ["compress.methods=[copy_test]", "compress.copy_test.note=y"])
        assert recipe.compress.copy_test.note == "y"
        names = [c[0] for c in expected_variants()]
        assert "student_kd_copy" in names and "teacher_copy" in names
    finally:
        compress_registry.unregister("copy_test")
    with pytest.raises(Exception, match="copy_test"):
        load_recipe("breastmnist", ["compress.methods=[copy_test]"])


@pytest.mark.parametrize("target", TARGETS)
def test_litert_fp16_is_smaller_and_agrees_with_its_fp32_file(grid_run, target):
    from medlite.evaluate.predictions import read_predictions

    if "litert" not in FORMATS:
        pytest.skip("LiteRT not installed")
    out, _, _ = grid_run
    fp32, fp16 = _variant(grid_run, f"{target}_tflite_fp32"), _variant(grid_run, f"{target}_tflite_fp16")
    assert fp16["format"] == "tflite-fp16" and fp16["parent"] == fp32["name"]
    # The weights halve; a tiny model's graph, biases and signature are a fixed share of its file.
    assert 0.4 < fp16["file_bytes"] / fp32["file_bytes"] < 0.7
    probs = [read_predictions(out / v["metrics"]["predictions"])[2] for v in (fp32, fp16)]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-2)
    views = [json.loads((out / v["bench"]["layers"]["file"]).read_text()) for v in (fp32, fp16)]
    weights = [sum(l["param_bytes"] for l in view["layers"] if l["macs"]) for view in views]
    assert 0.45 < weights[1] / weights[0] < 0.55
    assert all(l["precision"] == "fp16" for l in views[1]["layers"] if l["macs"])
