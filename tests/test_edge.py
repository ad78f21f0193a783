"""The edge runner: only numpy/onnxruntime/Pillow, and the same predictions as the training path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlite import edge
from medlite.data.preprocess import PreprocessSpec, prepare_files
from medlite.export.onnx import export_onnx, run_onnx

SRC = Path(__file__).resolve().parents[1] / "src"

# Everything medlite's training install brings that a `pip install --no-deps medlite numpy
# onnxruntime pillow` device does not have.
BLOCKED = (
    "torch", "onnx", "onnxscript", "sklearn", "lightning", "pytorch_lightning", "timm", "torchvision", "scipy",
    "pydantic", "yaml", "typer", "rich", "safetensors", "medmnist", "matplotlib", "jinja2", "torch_pruning",
    "pytorch_grad_cam", "captum", "tensorboard", "pandas", "sympy",
)
ALLOWED_THIRD_PARTY = {"numpy", "onnxruntime", "PIL", "medlite", "_distutils_hack", "psutil", "cython_runtime"}

RUNNER = textwrap.dedent(
    """
    import json, runpy, sys
    BLOCKED = set(sys.argv[1].split(","))
    attempts = []

    class Blocker:
        '''Any import of a blocked package fails, as on a device where it is not installed.'''
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError("blocked for the edge test: " + name)
            return None

    # A finder rather than sys.modules[name] = None: it also records imports that code catches.
    sys.meta_path.insert(0, Blocker())
    module, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code or 0
    except Exception:
        import traceback
        traceback.print_exc()
        code = 1
    loaded = sorted({m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
                    - set(sys.stdlib_module_names) - {"__main__"})
    loaded = [m for m in loaded if not m.startswith("_cython_")]  # numpy's compiled-extension helpers
    print("EDGE-IMPORTS " + json.dumps({"attempts": attempts, "third_party": loaded}), file=sys.stderr)
    sys.exit(code)
    """
)


def run_without_training_stack(module: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `python -m module args` with torch, onnx, pydantic, ... unimportable; return (process, import facts)."""
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(BLOCKED), module, *args],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    marker = [line for line in proc.stderr.splitlines() if line.startswith("EDGE-IMPORTS ")]
    assert marker, proc.stderr
    return proc, json.loads(marker[-1].split(" ", 1)[1])


@pytest.fixture(scope="module")
def busi_model(tmp_path_factory) -> tuple[Path, PreprocessSpec]:
    """A tiny 3-class student, grey 28 px, exported the way the pipeline does (metadata inside)."""
    import torch

    from medlite.models import create

    torch.manual_seed(0)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("benign", "malignant", "normal"))
    model = create("medlite_dsconv_tiny", num_classes=3, in_chans=1, img_size=28)
    with torch.no_grad():  # spread the logits so predictions are not all one class
        for p in model.parameters():
            p.mul_(3.0)
    path = tmp_path_factory.mktemp("edge") / "student.onnx"
    export_onnx(model, spec, path)
    return path, spec


@pytest.fixture(scope="module")
def busi_images(tmp_path_factory, busi_root) -> Path:
    """Three real BUSI images per class, copied with their awkward names (spaces, parentheses)."""
    folder = tmp_path_factory.mktemp("busi")
    for cls in ("benign", "malignant", "normal"):
        (folder / cls).mkdir()
        for path in sorted((busi_root / cls).glob("*.png"))[:3]:
            shutil.copy(path, folder / cls / path.name)
    return folder


def expected(model: Path, spec: PreprocessSpec, paths: list[Path]) -> dict[str, np.ndarray]:
    """Probabilities via the training path: prepare_files + run_onnx, one file at a time (batch 1, as the runner)."""
    out = {}
    for path in paths:
        logits = run_onnx(model, prepare_files([path], spec))[0]
        out[str(path)] = edge.softmax(logits[None])[0]
    return out


def check_same(report: dict, model: Path, spec: PreprocessSpec, paths: list[Path]) -> None:
    want = expected(model, spec, paths)
    assert sorted(r["path"] for r in report["images"]) == sorted(want)
    for item in report["images"]:
        probs = np.array([item["probabilities"][name] for name in spec.class_names])
        np.testing.assert_allclose(probs, want[item["path"]], rtol=0, atol=1e-6)
        assert item["class"] == spec.class_names[int(np.argmax(want[item["path"]]))]
        assert item["class_index"] == spec.class_names.index(item["class"])
        assert item["prep_ms"] > 0 and item["inference_ms"] > 0


def test_edge_runs_without_training_stack_and_matches_training_path(busi_model, busi_images):
    model, spec = busi_model
    proc, imports = run_without_training_stack("medlite.edge", str(model), str(busi_images), "--threads", "1", "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    assert imports["attempts"] == [], "the edge runner tried to import training-only packages"
    assert set(imports["third_party"]) <= ALLOWED_THIRD_PARTY, imports["third_party"]
    report = json.loads(proc.stdout)
    paths = sorted(busi_images.rglob("*.png"))
    assert len(report["images"]) == len(paths) == 9
    check_same(report, model, spec, paths)
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["class"] == r["class"] for r in report["images"])
    assert report["threads"] == 1 and report["spec_source"] == "onnx metadata"
    assert report["load_ms"] > 0 and report["peak_rss_mb"] > 10
    assert report["summary"]["count"] == 9


def test_blocker_really_blocks():
    """Guards the guard: a module that needs torch must fail under the same harness."""
    proc, imports = run_without_training_stack("medlite.models.compact")
    assert proc.returncode != 0 and "torch" in imports["attempts"]


def test_medmnist_pngs_match_training_path(busi_model, breast_npz, tmp_path, capsys):
    """PNGs written from breastmnist.npz: the runner sees exactly the arrays training normalises."""
    model, spec = busi_model
    images = breast_npz["test_images"][:6]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / "nested" / f"test_{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(image, mode="L").save(paths[-1])
    assert edge.main([str(model), str(tmp_path), "--indent", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    check_same(report, model, spec, paths)
    # The PNG round trip is lossless: the same logits as normalising the .npz arrays directly.
    from medlite.data.preprocess import normalize

    direct = edge.softmax(run_onnx(model, normalize(images[:, :, :, None], spec)))
    got = np.array([[r["probabilities"][n] for n in spec.class_names] for r in report["images"]])
    np.testing.assert_allclose(got, direct, atol=1e-5)


def _strip_metadata(model: Path, out: Path) -> Path:
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("sidecar_name", ["bare.onnx.json", "bare.json"])
def test_sidecar_spec(busi_model, busi_images, tmp_path, capsys, sidecar_name):
    model, spec = busi_model
    bare = _strip_metadata(model, tmp_path / "bare.onnx")
    (tmp_path / sidecar_name).write_text(json.dumps(spec.to_dict()))
    image = sorted(busi_images.rglob("*.png"))[0]
    assert edge.main([str(bare), str(image)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["spec_source"].endswith(sidecar_name)
    check_same(report, model, spec, [image])


def test_no_spec_exits_2_with_one_line(busi_model, busi_images, tmp_path):
    model, _ = busi_model
    bare = _strip_metadata(model, tmp_path / "bare.onnx")
    image = sorted(busi_images.rglob("*.png"))[0]
    proc = subprocess.run([sys.executable, "-m", "medlite.edge", str(bare), str(image)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bare.onnx" in lines[0] and "bare.json" in lines[0], proc.stderr


def test_bad_inputs_exit_2(busi_model, busi_images, tmp_path, capsys):
    model, _ = busi_model
    image = str(sorted(busi_images.rglob("*.png"))[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notmodel.onnx").write_bytes(b"garbage")
    cases = {
        "missing model": ([str(tmp_path / "nope.onnx"), image], "nope.onnx"),
        "missing image": ([str(model), str(tmp_path / "nope.png")], "nope.png"),
        "empty folder": ([str(model), str(tmp_path / "empty")], "empty"),
        "broken image": ([str(model), str(tmp_path / "broken.png")], "broken.png"),
        "not a model": ([str(tmp_path / "notmodel.onnx"), image], "notmodel.onnx"),
        "bad threads": ([str(model), image, "--threads", "-1"], "--threads"),
        "bad top-k": ([str(model), image, "--top-k", "0"], "--top-k"),
    }
    for label, (argv, named) in cases.items():
        assert edge.main(argv) == 2, label
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, (label, err)


def test_unreadable_file_in_folder_is_skipped(busi_model, busi_images, tmp_path, capsys):
    model, _ = busi_model
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sorted(busi_images.rglob("*.png"))[0], folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG broken")
    assert edge.main([str(model), str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in report["images"]] == ["good.png"]
    assert [Path(s["path"]).name for s in report["skipped"]] == ["bad.png"]
