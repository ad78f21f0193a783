"""Models the distillation engine adds: teachers' ensembles, fused multi-stage students, small ViTs,
ImageNet weights from the user cache (never downloaded here), feature taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.data.preprocess import PreprocessSpec
from medlite.errors import UsageError
from medlite.models import check_arch, create
from medlite.models.taps import FeatureTaps, stage_paths


def _spec(size: int, channels: int) -> PreprocessSpec:
    return PreprocessSpec(image_size=size, channels=channels, mean=0.5, std=0.5, class_names=("a", "b", "c"))


def _export_and_run(model, tmp_path, x):
    from medlite.export.onnx import export_onnx, run_onnx

    path = tmp_path / "m.onnx"
    check = export_onnx(model, _spec(x.shape[-1], x.shape[1]), path)
    return check, run_onnx(path, x.numpy())


def test_ensemble_is_the_weighted_mean_of_probabilities_and_exports(tmp_path):
    torch.manual_seed(0)
    model = create("ensemble(medlite_cnn_tiny,medlite_dsconv_tiny)", 3, 1, 28).eval()
    model.weights.copy_(torch.tensor([0.25, 0.75]))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        p = [torch.softmax(m(x), 1).numpy() for m in model.members]
        got = torch.softmax(model(x), 1).numpy()
    assert np.allclose(got, 0.25 * p[0] + 0.75 * p[1], atol=1e-6)
    check, onnx_out = _export_and_run(model, tmp_path, x)
    assert check["max_abs_diff"] < 1e-4
    assert np.allclose(np.exp(onnx_out), 0.25 * p[0] + 0.75 * p[1], atol=1e-5)  # measured on the exported file


def test_fused_student_exports_and_keeps_its_stages_tappable(tmp_path):
    torch.manual_seed(0)
    model = create("fused(medlite_dsconv_tiny)", 2, 1, 28).eval()
    assert stage_paths(model) == ["base.stages.0", "base.stages.1", "base.stages.2"]
    assert model.head.in_features == 32 + 64 + 128  # every stage's pooled features reach the classifier
    check, _ = _export_and_run(model, tmp_path, torch.randn(3, 1, 28, 28))
    assert check["max_abs_diff"] < 1e-4
    check_arch("fused(medlite_dsconv)")
    with pytest.raises(UsageError, match="unknown architecture"):
        check_arch("fused(medlite_dsconvv)")


@pytest.mark.parametrize("size", [28, 32])
def test_small_vit_trains_a_step_and_exports(tmp_path, size):
    torch.manual_seed(0)
    model = create("small_vit_tiny_patch16_224", 2, 1, size)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.num_patches == (size // 4) ** 2
    x = torch.randn(4, 1, size, size)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert stage_paths(model)[-1] == "blocks.11"
    check, _ = _export_and_run(model.eval(), tmp_path, x)
    assert check["max_abs_diff"] < 1e-3


def test_taps_name_unknown_modules():
    model = create("medlite_dsconv_tiny", 2, 1, 28)
    # Our students describe their stages the way timm models do.
    assert model.feature_info == [{"module": f"stages.{i}", "num_chs": c, "reduction": r}
                                  for i, (c, r) in enumerate(((32, 1), (64, 2), (128, 4)))]
    taps = FeatureTaps(model, ["stages.1"])
    model(torch.randn(2, 1, 28, 28))
    assert taps.take()["stages.1"].shape[1] == 64
    taps.remove()
    with pytest.raises(UsageError, match="stages.1"):
        FeatureTaps(model, ["stage.1"])


def _fake_hub_cache(root, repo: str, state: dict) -> None:
    """The Hugging Face cache layout (models--org--name/refs/main -> snapshots/<rev>/model.safetensors)."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snap = folder / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))


def test_imagenet_weights_come_from_the_user_cache(tmp_path, monkeypatch):
    import timm

    torch.manual_seed(7)
    source = timm.create_model("resnet18", pretrained=False)  # stands in for the ImageNet file
    _fake_hub_cache(tmp_path, "timm/resnet18.a1_in1k", source.state_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    model = create("resnet18", 2, 1, 28, pretrained="imagenet")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    # timm adapts the RGB stem to one channel (sum over RGB) and gives the new head a fresh init.
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(1, keepdim=True), atol=1e-6)
    assert model.fc.out_features == 2
    small = create("small_resnet18", 2, 1, 28, pretrained="imagenet")
    assert torch.equal(small.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_imagenet_weights_offline_and_not_cached_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    with pytest.raises(UsageError) as info:
        create("resnet50", 2, 1, 28, pretrained="imagenet")
    message = str(info.value)
    assert "'resnet50'" in message and "model.safetensors" in message and str(tmp_path) in message
    with pytest.raises(UsageError, match="timm models only"):
        create("medlite_dsconv", 2, 1, 28, pretrained="imagenet")
