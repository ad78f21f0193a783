"""LiteRT: export (fp32, int8 dynamic, int8 static) with litert-torch / ai-edge-quantizer, run in
ai-edge-litert with XNNPACK through the runtime seam; and the missing-extra error."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from medlite.errors import UsageError

HAVE_LITERT = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"))


def test_litert_requested_but_missing_is_a_clear_error(monkeypatch):
    from medlite.export import litert
    from medlite.pipeline import check_recipe as check_export_formats
    from medlite.recipe import load_recipe

    monkeypatch.setattr(litert, "missing_packages", lambda: ["litert-torch"])
    recipe = load_recipe(None, ["export.formats=[onnx,litert]"])
    with pytest.raises(UsageError, match=r"litert needs litert-torch.*pip install medlite\[litert\]"):
        check_export_formats(recipe)
    check_export_formats(load_recipe(None, []))  # default [onnx]: nothing to check
    with pytest.raises(UsageError, match="onnx must stay"):
        load_recipe(None, ["export.formats=[litert]"])


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LITERT, reason="litert-torch / ai-edge-litert / ai-edge-quantizer not installed")
def test_litert_files_match_pytorch_and_carry_preprocessing(tmp_path, breast_npz):
    import torch

    from medlite.data.preprocess import PreprocessSpec, normalize
    from medlite.export.litert import convert_fp32, quantize
    from medlite.models import create
    from medlite.runtime import open_artifact, softmax

    torch.manual_seed(0)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("benign", "malignant"))
    model = create("medlite_dsconv_tiny", num_classes=2, in_chans=1, img_size=28)
    # A few real training steps, so the outputs depend on the image (int8 has something to keep).
    xtr = torch.from_numpy(normalize(breast_npz["train_images"][:, :, :, None], spec))
    ytr = torch.from_numpy(breast_npz["train_labels"][:, 0].astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(3):
        for i in range(0, len(xtr), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64]).backward()
            opt.step()
    model.eval()
    images = breast_npz["test_images"][:64, :, :, None]
    x = normalize(images, spec)
    with torch.no_grad():
        want = softmax(model(torch.from_numpy(x)).numpy())
    fp32 = tmp_path / "m_fp32.tflite"
    check = convert_fp32(model, spec, fp32, "m_fp32")
    assert check["max_abs_diff"] < 1e-4
    art = open_artifact(fp32)  # runtime from the registry, preprocessing from the sidecar
    assert art.runtime == "litert" and art.spec == spec and art.spec_source.endswith("m_fp32.tflite.json")
    assert len(art.files()) == 2 and art.file_bytes() > fp32.stat().st_size
    np.testing.assert_allclose(art.predict_proba(images), want, atol=1e-5)
    calib = normalize(breast_npz["train_images"][:32, :, :, None], spec)
    for mode in ("int8_dynamic", "int8_static"):
        path = tmp_path / f"m_{mode}.tflite"
        quantize(fp32, mode, path, spec, f"m_{mode}", calib if mode == "int8_static" else None)
        q = open_artifact(path)
        assert path.stat().st_size < 0.6 * fp32.stat().st_size
        got = q.predict_proba(images)
        # int8 changes the numbers a little, not the answers for most images
        assert np.abs(got - want).max() < 0.25 and (got.argmax(1) == want.argmax(1)).mean() >= 0.85
        assert np.corrcoef(got[:, 1], want[:, 1])[0, 1] > 0.8, mode


def test_converter_failure_is_recorded_not_raised(tmp_path, monkeypatch):
    """A converter that cannot handle an architecture: one line in ctx.skipped, no variant, no crash."""
    from types import SimpleNamespace

    from medlite.data.preprocess import PreprocessSpec
    from medlite.export import litert
    from medlite.export.litert_stage import export_trained as stage_litert_exports
    from medlite.recipe import load_recipe
    from medlite.runstate import RunDir
    from medlite.context import Context
    from medlite.variant import TrainSection, Variant

    def fail(*args, **kwargs):
        raise RuntimeError("Lowering not found: aten::grid_sampler_3d\nlong traceback follows")

    monkeypatch.setattr(litert, "convert_fp32", fail)
    run = RunDir(tmp_path / "run")
    run.open()
    said = []
    ctx = Context(load_recipe(None, ["export.formats=[onnx,litert]"]), run, tmp_path, said.append, False)
    ctx.dataset = SimpleNamespace(preprocess=PreprocessSpec(28, 1, 0.5, 0.5, ("a", "b")), fingerprint=lambda: "d")
    (run.models / "teacher.onnx").write_bytes(b"onnx bytes")
    ctx.add(Variant(name="teacher", parent=None, stage="train", arch="resnet18", file="models/teacher.onnx",
                    checkpoint="checkpoints/teacher.safetensors", train_section=TrainSection("teacher")))
    monkeypatch.setattr(ctx.models, "load", lambda v: None)
    stage_litert_exports(ctx)
    assert list(ctx.variants) == ["teacher"]
    assert ctx.skipped == [{"name": "teacher_tflite_fp32", "parent": "teacher", "format": "tflite-fp32",
                            "reason": "RuntimeError: Lowering not found: aten::grid_sampler_3d"}]
    assert any("teacher_tflite_fp32: skipped" in line for line in said)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LITERT, reason="litert-torch / ai-edge-litert / ai-edge-quantizer not installed")
def test_edge_runner_runs_tflite_with_only_litert_numpy_pillow(tmp_path, breast_npz, monkeypatch):
    import json

    import test_edge
    import torch
    from PIL import Image

    from medlite.data.preprocess import PreprocessSpec
    from medlite.export.litert import convert_fp32
    from medlite.models import create
    from medlite.runtime import open_artifact

    torch.manual_seed(0)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("benign", "malignant"))
    model = create("medlite_dsconv_tiny", num_classes=2, in_chans=1, img_size=28).eval()
    path = tmp_path / "m.tflite"
    convert_fp32(model, spec, path, "m")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(breast_npz["test_images"][i]).save(folder / f"{i}.png")
    # No onnxruntime either: a .tflite needs only ai-edge-litert, numpy and Pillow.
    monkeypatch.setattr(test_edge, "BLOCKED", test_edge.BLOCKED + ("onnxruntime",))
    proc, imports = test_edge.run_without_training_stack("medlite.edge", str(path), str(folder), "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert imports["attempts"] == [] and "onnxruntime" not in imports["third_party"]
    report = json.loads(proc.stdout)
    assert report["runtime"].startswith("ai-edge-litert") and report["summary"]["count"] == 3
    art = open_artifact(path)
    for item in report["images"]:
        pixels = np.asarray(Image.open(item["path"]).convert("L"))[None, :, :, None]
        want = art.predict_proba(pixels)[0]
        np.testing.assert_allclose([item["probabilities"][c] for c in spec.class_names], want, atol=1e-6)
