"""LiteRT: export (fp32, int8 dynamic, int8 static) with litert-torch / ai-edge-quantizer, run in
ai-edge-litert with XNNPACK through the runtime seam; and the missing-extra error.

`make test` installs the converter (`make litert`), so these run for real; without it they skip
locally and fail under CI (`CI=true`), where a skipped conversion would test nothing.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

from medlite.errors import ExportFailed, UsageError


@pytest.fixture(scope="module")
def converter():
    """The converter, importable with every dependency (not only present), or a skip / CI failure."""
    from medlite.export.litert import missing_packages

    missing = missing_packages()
    if missing:
        reason = f"LiteRT converter not ready: {', '.join(missing)} (make litert)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI=true: `make test` installs it", pytrace=False)
        pytest.skip(reason)


def test_litert_requested_but_missing_is_a_clear_error(monkeypatch):
    from medlite.export import litert
    from medlite.pipeline import check_recipe as check_export_formats
    from medlite.recipe import load_recipe

    from medlite.export import registry

    monkeypatch.setattr(litert, "missing_packages", lambda: ["litert-torch"])
    recipe = load_recipe(None, ["export.formats=[onnx,litert]"])
    hint = re.escape(registry.get("litert").install_hint)
    with pytest.raises(UsageError, match=rf"litert needs litert-torch, not installed \({hint}\)"):
        check_export_formats(recipe)
    check_export_formats(load_recipe(None, []))  # default [onnx]: nothing to check
    with pytest.raises(UsageError, match="onnx must stay"):
        load_recipe(None, ["export.formats=[litert]"])


def test_converter_found_but_not_importable_is_missing(tmp_path, monkeypatch):
    """Issue 18: litert-torch installed with --no-deps is found, but its first import fails (No module
    named 'opt_einsum'): that is a missing package before the run, not every file skipped after it."""
    from medlite.export import litert
    from medlite.pipeline import check_recipe
    from medlite.recipe import load_recipe

    (tmp_path / "fake_converter").mkdir()
    (tmp_path / "fake_converter" / "__init__.py").write_text("import opt_einsum_not_installed_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_converter", raising=False)
    monkeypatch.setattr(litert, "_ENTRY_POINTS", {"fake_converter": "fake-converter"})
    assert litert.missing_packages() == ["opt_einsum_not_installed_here (imported by fake-converter)"]
    with pytest.raises(UsageError, match=r"litert needs opt_einsum_not_installed_here \(imported by fake-converter\)"):
        check_recipe(load_recipe(None, ["export.formats=[onnx,litert]"]))


@pytest.mark.slow
def test_litert_files_match_pytorch_and_carry_preprocessing(tmp_path, breast_npz, converter):
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


def _litert_ctx(tmp_path, monkeypatch, names):
    """A run context with trained (ONNX-exported) variants `names`, for the LiteRT stage alone."""
    from types import SimpleNamespace

    from medlite.context import Context
    from medlite.data.preprocess import PreprocessSpec
    from medlite.recipe import load_recipe
    from medlite.runstate import RunDir
    from medlite.variant import TrainSection, Variant

    run = RunDir(tmp_path / "run")
    run.open()
    said: list[str] = []
    ctx = Context(load_recipe(None, ["export.formats=[onnx,litert]"]), run, tmp_path, said.append, False)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("a", "b"))
    ctx.dataset = SimpleNamespace(preprocess=spec, image_size=28, fingerprint=lambda: "d")
    ctx.dataset.at_size = lambda size: ctx.dataset  # every variant at the data's 28 px
    for name in names:
        (run.models / f"{name}.onnx").write_bytes(b"onnx bytes")
        ctx.add(Variant(name=name, parent=None, stage="train", arch="resnet18", file=f"models/{name}.onnx",
                        checkpoint=f"checkpoints/{name}.safetensors", train_section=TrainSection(name)))
    monkeypatch.setattr(ctx.models, "load", lambda v: v.name)
    return ctx, said


def _failing_convert(fails):
    def convert(model, spec, path, variant):
        if model in fails:
            raise RuntimeError("Lowering not found: aten::grid_sampler_3d\nlong traceback follows")
        raise AssertionError("only the failing sources reach the converter in these tests")
    return convert


def test_converter_failure_is_recorded_not_raised(tmp_path, monkeypatch):
    """A converter that cannot handle one architecture: one line in ctx.skipped, no variant, no crash,
    while the other trained variants still get their LiteRT files."""
    from medlite.export import litert, litert_stage

    ctx, said = _litert_ctx(tmp_path, monkeypatch, ["teacher", "student"])
    monkeypatch.setattr(litert, "convert_fp32", _failing_convert({"teacher"}))
    real_run_stage = ctx.ledger.run_stage

    def run_stage(stage):  # the student's files are made (stand-in: no converter needed for this test)
        return None if stage.name.startswith("student_") else real_run_stage(stage)

    monkeypatch.setattr(ctx.ledger, "run_stage", run_stage)
    litert_stage.export_trained(ctx)
    assert list(ctx.variants) == ["teacher", "student"]
    assert ctx.skipped == [{"name": "teacher_tflite_fp32", "parent": "teacher", "format": "tflite-fp32",
                            "reason": "RuntimeError: Lowering not found: aten::grid_sampler_3d"}]
    assert any("teacher_tflite_fp32: skipped" in line for line in said)


def test_litert_asked_for_and_none_made_fails_the_run(tmp_path, monkeypatch):
    """Issue 18: a run asked for LiteRT whose every conversion was skipped exited 0. Now it stops with
    one line naming the skipped variants and the reason, exit code 1 (not the user's fault: not 2)."""
    from medlite.export import litert, litert_stage

    ctx, said = _litert_ctx(tmp_path, monkeypatch, ["teacher", "student"])
    monkeypatch.setattr(litert, "convert_fp32", _failing_convert({"teacher", "student"}))
    with pytest.raises(ExportFailed) as failed:
        litert_stage.export_trained(ctx)
    message = str(failed.value)
    assert message == ("export.formats: litert made no LiteRT file (teacher_tflite_fp32, student_tflite_fp32: "
                       "RuntimeError: Lowering not found: aten::grid_sampler_3d)")
    assert "\n" not in message and failed.value.exit_code == 1 and not isinstance(failed.value, UsageError)
    assert [s["name"] for s in ctx.skipped] == ["teacher_tflite_fp32", "student_tflite_fp32"]


@pytest.mark.slow
def test_edge_runner_runs_tflite_with_only_litert_numpy_pillow(tmp_path, breast_npz, monkeypatch, converter):
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
