"""Deployment: the runtime seam, model cards, input adaptation, `medlite predict`, `medlite serve`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploy_helpers import CLASSES, live_server, make_model, reference_probs, write_images
from medlite.runtime import ArtifactError, open_artifact, read_operating_point, runtime_for

SRC = Path(__file__).resolve().parents[1] / "src"

CARD = {
    "model": "student_kd", "arch": "medlite_dsconv_tiny", "format": "onnx-fp32", "classes": list(CLASSES),
    "intended_use": "Research only.", "dataset": {"name": "breastmnist", "source": "medmnist",
                                                   "images": {"train": 546, "val": 78, "test": 156}},
    "metrics": {"split": "test", "auc": 0.81, "n": 156, "ci": {"auc": [0.74, 0.88]}, "confidence": 0.95},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), card=CARD)


@pytest.fixture(scope="module")
def images(tmp_path_factory, breast_npz) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("imgs") / "breast", breast_npz, 24)


# -- the runtime seam -------------------------------------------------------------------------


def test_registry_picks_runtime_and_reads_card(model):
    assert runtime_for("a/b.onnx") == "onnxruntime" and runtime_for("x.TFLITE") == "litert"
    with pytest.raises(ArtifactError, match="no runtime reads .pt"):
        runtime_for("model.pt")
    with pytest.raises(ArtifactError, match="unknown runtime"):
        runtime_for("model.onnx", "tensorrt")
    art = open_artifact(model)
    assert art.runtime == "onnxruntime" and art.class_names == list(CLASSES)
    assert art.spec_source == "onnx metadata" and art.card["metrics"]["auc"] == 0.81
    assert art.input_shape[1:] == (1, 28, 28) and art.file_bytes() == model.stat().st_size
    assert art.operating_point is None


def test_operating_point_reader_reads_every_shape_medlite_writes():
    names = ["benign", "malignant"]
    assert read_operating_point({}, None, names) is None
    assert read_operating_point({"medlite.operating_point": "0.3"}, None, names)["threshold"] == 0.3
    op = read_operating_point({"medlite.operating_point": json.dumps({"threshold": 0.2, "positive_class": "benign"})},
                              None, names)
    assert op["threshold"] == 0.2 and op["positive_index"] == 0
    assert read_operating_point({}, {"operating_point": {"threshold": 0.4}}, names)["source"] == "card.operating_point"
    # More than two classes: the operating point names its class (the evaluation requires one).
    three = ["a", "b", "c"]
    op = read_operating_point({"medlite.operating_point": json.dumps({"threshold": 0.3, "positive_class": "c"})},
                              None, three)
    assert op["positive_index"] == 2 and op["positive_class"] == "c"


@pytest.mark.parametrize("stored, names, why", [
    ("not json", ["benign", "malignant"], "neither a threshold"),
    ("1.7", ["benign", "malignant"], "not between 0 and 1"),
    ("true", ["benign", "malignant"], "neither a threshold"),
    (json.dumps({"positive_class": "malignant"}), ["benign", "malignant"], "no numeric `threshold`"),
    (json.dumps({"threshold": "0.3"}), ["benign", "malignant"], "no numeric `threshold`"),
    (json.dumps({"threshold": 0.3, "positive_class": "tumour"}), ["benign", "malignant"], "names class 'tumour'"),
    (json.dumps({"threshold": 0.3, "positive_index": 2}), ["benign", "malignant"], "not a class index"),
    (json.dumps({"threshold": 0.3, "positive_class": "benign", "positive_index": 1}), ["benign", "malignant"],
     "does not match"),
    ("0.3", ["a", "b", "c"], "names no positive_class"),
])
def test_malformed_operating_point_is_refused_naming_the_file(stored, names, why):
    """Before: silently dropped, and the device fell back to the argmax."""
    with pytest.raises(ArtifactError, match=why) as err:
        read_operating_point({"medlite.operating_point": stored}, None, names, {"medlite.operating_point": "m.onnx"})
    assert str(err.value).startswith("m.onnx (medlite.operating_point): ")


def test_malformed_operating_point_in_a_file_refuses_to_open(tmp_path):
    from medlite.export.onnx import write_metadata

    path = make_model(tmp_path)
    write_metadata(path, {"medlite.operating_point": "0.3 or so"})
    with pytest.raises(ArtifactError, match=f"{path}.*operating point '0.3 or so'"):
        open_artifact(path)
    proc = subprocess.run([sys.executable, "-m", "medlite.edge", str(path), str(path)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2 and str(path) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_operating_point_from_the_sidecar_card_names_the_sidecar(tmp_path):
    from medlite.runtime import write_sidecar

    path = make_model(tmp_path)
    sidecar = write_sidecar(path, {"medlite.card": {"operating_point": {"threshold": 2}}})
    with pytest.raises(ArtifactError, match=f"{sidecar} \\(card.operating_point\\)"):
        open_artifact(path)


def test_multiclass_operating_point_decides_at_its_class():
    """Before: a three-class file's operating point was ignored (argmax), unlike the evaluation's predictions."""
    from medlite.runtime import Artifact, decide

    probs = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.6, 0.3, 0.1]])
    assert decide(probs, 2, 0.25).tolist() == [2, 2, 0]
    assert decide(probs, 1, 0.5).tolist() == [0, 1, 0]  # below the threshold: the most probable other class
    art = Artifact.__new__(Artifact)  # only the decision: no file needed
    art.path = Path("m.onnx")
    art.operating_point = read_operating_point(
        {"medlite.operating_point": json.dumps({"threshold": 0.25, "positive_class": "c"})}, None, ["a", "b", "c"])
    assert art.decide(probs).tolist() == [2, 2, 0]
    art.operating_point = None
    assert art.decide(probs).tolist() == [0, 1, 0]
    with pytest.raises(ArtifactError, match="needs a positive class"):
        art.decide(probs, threshold=0.3)


def test_write_sidecar_refuses_a_malformed_sidecar(tmp_path):
    """Before: a sidecar that was not JSON was silently replaced (its preprocessing and card lost)."""
    from medlite.runtime import write_sidecar

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    sidecar = tmp_path / "m.tflite.json"
    for bad in ("{not json", "[1, 2]"):
        sidecar.write_text(bad)
        with pytest.raises(ArtifactError, match=str(sidecar)):
            write_sidecar(model, {"medlite.card": {}})
        assert sidecar.read_text() == bad
    sidecar.write_text(json.dumps({"medlite.preprocess": {"a": 1}}))
    assert write_sidecar(model, {"medlite.card": {"b": 2}}) == sidecar
    assert json.loads(sidecar.read_text()) == {"medlite.preprocess": {"a": 1}, "medlite.card": {"b": 2}}


def test_runtimes_are_registered_objects_with_capabilities():
    from medlite.runtime import get_runtime, resolve_runtime, runtimes

    onnx, litert = get_runtime("onnxruntime"), get_runtime("litert")
    assert onnx.metadata_in_file and not onnx.sidecar_required and onnx.primary
    assert not litert.metadata_in_file and litert.sidecar_required and not litert.primary
    assert resolve_runtime("m.tflite") is litert and set(runtimes()) >= {"onnxruntime", "litert"}
    with pytest.raises(ArtifactError, match="unknown runtime 'tensorrt'; registered: onnxruntime, litert"):
        get_runtime("tensorrt")
    with pytest.raises(AttributeError):
        onnx.name = "other"  # frozen


def test_operating_point_in_file_changes_decisions(tmp_path, images):
    path = make_model(tmp_path, metadata={"medlite.operating_point": json.dumps({"threshold": 0.9})})
    art = open_artifact(path)
    ref = reference_probs(path, images)
    from medlite.deploy.predict import predict_files

    got = predict_files(path, images)
    want = np.where(ref[:, 1] >= 0.9, 1, 0)
    assert [r["predicted"] for r in got["predictions"]] == [CLASSES[i] for i in want]
    assert art.operating_point["threshold"] == 0.9 and "0.9" in got["decision"]


def test_adaptation_report_and_warnings(model):
    from medlite.data.preprocess import PreprocessSpec
    from medlite.runtime.adapt import load_for_model

    spec = PreprocessSpec(28, 1, 0.5, 0.5, CLASSES)
    grey = Image.fromarray(np.full((28, 28), 120, np.uint8))
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    px, rep = load_for_model(buf.getvalue(), spec)
    assert px.shape == (28, 28, 1) and rep["warnings"] == [] and rep["resized_to"] is None
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (200, 600, 3), dtype=np.uint8))  # colour, 3:1
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    px, rep = load_for_model(buf.getvalue(), spec)
    assert rep["original_size"] == [600, 200] and rep["colour_to_grey"] and rep["aspect_change"] == 3.0
    assert any("colour image" in w for w in rep["warnings"]) and any("aspect ratio" in w for w in rep["warnings"])
    expected = np.asarray(photo.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(px[:, :, 0], expected)


# -- medlite predict ---------------------------------------------------------------------------


def test_predict_cli_csv_json_and_unreadable(tmp_path, model, images):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[0]}\nmissing.png\n# comment\n")
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    cmd = [sys.executable, "-m", "medlite.cli", "predict", str(model), str(images[0].parent), str(bad), str(listing)]
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd + ["--out", str(out_csv)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "model: model file given" in proc.stderr and "unreadable" in proc.stderr
    rows = list(csv.DictReader(out_csv.open()))
    classified = [r for r in rows if r["predicted"]]
    assert len(classified) == len(images) + 1  # the folder plus the listed copy
    errors = {Path(r["file"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"broken.png", "missing.png"} and "not found" in errors["missing.png"]
    ref = reference_probs(model, images)
    by_file = {r["file"]: r for r in classified}
    for path, p in zip(images, ref):
        row = by_file[str(path)]
        np.testing.assert_allclose([float(row["p_benign"]), float(row["p_malignant"])], p, atol=2e-6)
        assert row["predicted"] == CLASSES[int(p.argmax())]
        assert row["low_confidence"] == str(int(p.max() < 0.6))
    proc = subprocess.run(cmd + ["--out", str(out_json), "--threshold", "0.5"], capture_output=True, text=True,
                          env=env, timeout=120)
    doc = json.loads(out_json.read_text())
    assert doc["summary"]["classified"] == len(images) + 1 and doc["summary"]["unreadable"] == 2
    assert doc["model"]["card"]["metrics"]["auc"] == 0.81 and doc["summary"]["images_per_s"] > 0
    bad_out = subprocess.run(cmd + ["--out", str(tmp_path / "p.xlsx")], capture_output=True, text=True, env=env)
    assert bad_out.returncode == 2 and "use a .csv or .json" in bad_out.stderr
    none = subprocess.run([*cmd[:5], str(bad)], capture_output=True, text=True, env=env)
    assert none.returncode == 2


def test_run_dir_selection_rule(tmp_path, model):
    from medlite.deploy.select import choose_variant

    (tmp_path / "models").mkdir()
    big = tmp_path / "models" / "teacher.onnx"
    big.write_bytes(model.read_bytes() + b"")
    small = tmp_path / "models" / "student.onnx"
    small.write_bytes(model.read_bytes())
    # Test AUCs that would choose otherwise: the rule must look at validation only (issue 21).
    variants = [
        {"name": "teacher", "file": "models/teacher.onnx", "runtime": "onnxruntime", "file_bytes": 9000,
         "metrics": {"auc": 0.99}, "val_metrics": {"auc": 0.90}},
        {"name": "student", "file": "models/student.onnx", "runtime": "onnxruntime", "file_bytes": 3000,
         "metrics": {"auc": 0.70}, "val_metrics": {"auc": 0.895}},
        {"name": "tiny", "file": "models/student.onnx", "runtime": "onnxruntime", "file_bytes": 1000,
         "metrics": {"auc": 0.99}, "val_metrics": {"auc": 0.85}},
        {"name": "gone", "file": "models/gone.onnx", "runtime": "onnxruntime", "file_bytes": 10,
         "metrics": {"auc": 0.99}, "val_metrics": {"auc": 0.99}},
        {"name": "untested", "file": "models/student.onnx", "runtime": "onnxruntime", "file_bytes": 10,
         "metrics": {"auc": 0.99}},
    ]
    (tmp_path / "results.json").write_text(json.dumps({"variants": variants}))
    path, chosen, rule = choose_variant(tmp_path)
    assert chosen["name"] == "student" and path == small
    assert rule.startswith("chosen on the validation split") and "within 0.01 of the best validation AUC (0.900)" in rule
    assert "AUC 0.700 is reported after the choice" in rule  # no resolved recipe here: the split is "recorded"
    assert "gone (file missing)" in rule and "untested (no validation AUC recorded)" in rule


def bomb_png() -> bytes:
    """A 10000 x 10000 grey PNG: ~100 KB on the wire, 100 MB once decoded."""
    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, format="PNG")
    return buf.getvalue()


# -- medlite serve ------------------------------------------------------------------------------


def test_serve_api_page_and_malformed_uploads(model, images):
    import httpx

    from medlite.deploy.serve import create_app

    app = create_app(model, max_upload_mb=0.5, max_files=4)
    ref = reference_probs(model, images[:2])
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
        info = client.get("/model").json()
        assert info["card"]["metrics"]["auc"] == 0.81 and info["latency"]["p50_ms"] > 0
        page = client.get("/").text
        assert "0.810 (95% CI 0.740–0.880)" in page and "http://" not in page and "https://" not in page
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images[:2]]
        res = client.post("/predict", params={"heatmap": 1}, files=files)
        assert res.status_code == 200, res.text
        results = res.json()["results"]
        for r, p in zip(results, ref):
            np.testing.assert_allclose([r["probabilities"][c] for c in CLASSES], p, atol=2e-6)
            assert r["predicted"] == CLASSES[int(p.argmax())]
            png = Image.open(io.BytesIO(__import__("base64").b64decode(r["heatmap_png"])))
            assert png.size == (224, 224)
        cases = {
            "empty": (client.post("/predict", files={"file": ("e.png", b"", "image/png")}), 400),
            "not an image": (client.post("/predict", files={"file": ("x.png", b"hello" * 100, "image/png")}), 415),
            "huge": (client.post("/predict", files={"file": ("h.bmp", b"0" * 700_000, "image/bmp")}), 413),
            "wrong field": (client.post("/predict", files={"image": ("a.png", images[0].read_bytes(), "image/png")}), 422),
            "text field": (client.post("/predict", data={"file": "hello"}), 422),
            "not multipart": (client.post("/predict", content=b"{}", headers={"content-type": "application/json"}), 400),
            "decompression bomb": (client.post("/predict", files={"file": ("b.png", bomb_png(), "image/png")}), 413),
            "too many files": (client.post("/predict", files=[("file", (p.name, p.read_bytes())) for p in images[:6]]), 400),
        }
        for label, (res, status) in cases.items():
            assert res.status_code == status, (label, res.status_code, res.text)
            assert res.json()["error"], label
        assert client.get("/health").json()["status"] == "ok"  # still serving


def test_serve_under_bounded_local_load(model, images):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from serve_load import run_load

    from medlite.deploy.serve import create_app

    with live_server(create_app(model)) as url:
        stats = run_load(url, [p.read_bytes() for p in images[:8]], clients=4, requests_per_client=10)
    assert stats["errors"] == 0 and stats["requests"] == 40
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]


# -- medlite bench --soak -------------------------------------------------------------------------


def test_soak_samples_every_second_into_csv_and_png(tmp_path, model):
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "soak.csv"
    proc = subprocess.run([sys.executable, "-m", "medlite.cli", "bench", str(model), "--soak", "2", "--soak-out", str(out),
                           "--threads", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and [round(float(r["t_s"])) for r in rows] == [1, 2]
    assert all(int(r["inferences"]) > 0 and float(r["rss_mb"]) > 0 for r in rows)
    summary = json.loads(out.with_suffix(".json").read_text())["summary"]
    assert summary["inferences"] == sum(int(r["inferences"]) for r in rows)
    assert (summary["temperature_c_max"] is None) == bool(summary["temperature_unavailable"])
    assert out.with_suffix(".png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "medlite.cli", "bench", str(model), "--soak", "0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--soak" in bad.stderr


def test_a_model_no_better_than_chance_says_so_on_the_page():
    """Issue 21: a 2-epoch model at chance was served without a word of warning."""
    from medlite.deploy.page import card_rows, render_page

    info = {"card": {"warnings": ["no better than chance: test AUC 0.580 (95% CI 0.490-0.660) includes 0.5"]},
            "file": "m/student.onnx", "file_bytes": 2048, "files": ["m/student.onnx"],
            "latency": {"p50_ms": 0.5, "threads": 1}, "runtime": "onnxruntime", "limits": {"max_files": 4, "max_upload_mb": 8}}
    assert card_rows(info)[0] == ("Warning", info["card"]["warnings"][0])
    page = render_page(info)
    assert '<tr class="warnrow"><td>Warning</td><td>no better than chance: test AUC 0.580' in page
