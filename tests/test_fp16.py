"""Float16 post-training quantization end to end (issue 19): ONNX fp16 (onnxconverter-common) and
LiteRT float16 weights (its end-to-end cells are in tests/test_conformance.py), measured like every
variant, and the per-layer view of each file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medlite.errors import UsageError
from medlite.recipe import load_recipe

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_recipe():
    # ONNX only: the LiteRT float16 file is checked in the conformance grid (tests/test_conformance.py),
    # against every consumer, where the LiteRT converter is loaded anyway.
    return load_recipe("breastmnist", [
        "data.limit=48", "teacher.arch=medlite_cnn_tiny", "teacher.epochs=1", "student.arch=medlite_dsconv_tiny",
        "student.epochs=1", "distill.scratch_baseline=false", "evaluate.bootstrap=20", "compress.targets=[student_kd]",
        "compress.methods=[fp16]", "compress.chains=[]", "export.formats=[onnx]",
        "bench.enabled=true", "bench.threads=[1]", "bench.warmup=1", "bench.iterations=3", "bench.time_budget_s=0.2",
        "bench.throughput_batch=2", "bench.reference=false", "explain.enabled=false",
    ])


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    pytest.importorskip("onnxconverter_common")
    from medlite.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("fp16")
    results = run_pipeline(tiny_recipe(), out, data_root, say=lambda line: None, progress=False)
    return out, {v["name"]: v for v in results["variants"]}


def _probs(out: Path, variant: dict) -> np.ndarray:
    from medlite.evaluate.predictions import read_predictions

    return read_predictions(out / variant["metrics"]["predictions"])[2]


@pytest.mark.slow
def test_onnx_fp16_is_half_the_size_and_agrees_with_fp32(run):
    import onnx

    out, variants = run
    fp32, fp16 = variants["student_kd"], variants["student_kd_fp16"]
    assert fp16["format"] == "onnx-fp16" and fp16["parent"] == "student_kd" and fp16["stage"] == "fp16"
    assert 0.4 < fp16["file_bytes"] / fp32["file_bytes"] < 0.6
    np.testing.assert_allclose(_probs(out, fp16), _probs(out, fp32), atol=1e-2)  # predictions come from the files
    model = onnx.load(str(out / fp16["file"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert "medlite.preprocess" in {p.key for p in model.metadata_props}
    assert fp16["bench"]["latency_ms"]["p50"] > 0  # timed like every variant


@pytest.mark.slow
def test_every_variant_has_a_layer_view_in_the_run_and_the_report(run):
    import json

    out, variants = run
    for name in ["student_kd", "student_kd_fp16"]:
        summary = variants[name]["bench"]["layers"]
        view = json.loads((out / summary["file"]).read_text())
        convs = [l for l in view["layers"] if l["macs"] and l["op"] in ("Conv", "CONV_2D", "DEPTHWISE_CONV_2D")]
        assert convs
        if name.endswith("fp16"):
            assert all("float16" in l["stored"] for l in convs), name
            # fp16, or float32 where the profiler saw ONNX Runtime cast the layer (said, with the reason).
            assert all(l["precision"] == "fp16" or l["name"] in view["totals"]["fp16_run_as_fp32"] for l in convs), name
        assert sum(l["share"] for l in view["layers"]) + sum(r["share"] for r in view["inserted"]) == \
            pytest.approx(1.0, abs=1e-3)
    html = (out / "report.html").read_text()
    assert 'id="layers"' in html and "student_kd_fp16" in html and (out / "figures" / "layers_student_kd_fp16.png").is_file()


def test_fp16_without_the_converter_is_refused_before_training(monkeypatch):
    from medlite.compress import fp16
    from medlite.pipeline import check_recipe

    monkeypatch.setattr(fp16, "missing_packages", lambda: ["onnxconverter-common"])
    with pytest.raises(UsageError, match=r"compress.methods: fp16 needs onnxconverter-common, not installed \(pip install"):
        check_recipe(tiny_recipe())


def test_litert_fp16_without_float_casting_is_refused(monkeypatch):
    from medlite.export import litert
    from medlite.pipeline import check_recipe

    monkeypatch.setattr(litert, "missing_packages", lambda: [])
    monkeypatch.setattr(litert, "fp16_unsupported", lambda: "no float casting here")
    recipe = load_recipe("breastmnist", ["export.formats=[onnx,litert]", "export.litert.quantize=[fp32,fp16]"])
    with pytest.raises(UsageError, match="export.litert.quantize: fp16 cannot be made here: no float casting here"):
        check_recipe(recipe)


def test_cli_fp16_without_the_converter_exits_2_in_one_line(tmp_path, data_root):
    # The converter made unimportable in the child process only (None in sys.modules blocks an import).
    code = ("import sys; sys.modules['onnxconverter_common'] = None; from medlite.cli import main; "
            f"sys.argv = ['medlite', 'run', 'breastmnist', '--out', {str(tmp_path / 'run')!r}, '--data-root', "
            f"{str(data_root)!r}, '--set', 'compress.methods=[fp16]']; main()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(r"fp16 needs onnxconverter-common.*pip install", lines[0]), proc.stderr
    assert not (tmp_path / "run").exists()
