import pytest
import torch

from medlite.errors import UsageError
from medlite.models import check_arch, count_params, create
from medlite.models.weights import load_pretrained, save_state


@pytest.mark.parametrize("arch", ["medlite_cnn", "medlite_dsconv", "small_resnet18", "resnet18", "torchvision/mobilenet_v3_small"])
def test_create_runs_grey_input(arch):
    model = create(arch, num_classes=3, in_chans=1, img_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_students_are_small_and_expose_stages():
    teacher = count_params(create("small_resnet18", 2, 1, 28))
    for arch in ("medlite_cnn", "medlite_dsconv"):
        student = create(arch, 2, 1, 28)
        assert count_params(student) * 20 <= teacher
        assert len(student.stages) >= 3  # feature taps for distillation


def test_small_stem_keeps_resolution():
    model = create("small_resnet18", 2, 1, 28)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("base, stem, pool", [
    ("mobilenetv3_small_050", "conv_stem", None),
    ("convnext_atto", "stem.0", None),
    ("densenet121", "features.conv0", "features.pool0"),
])
def test_small_stem_of_other_timm_families(base, stem, pool):
    """small_ keeps full resolution after the stem; small_pooled_ halves it once; both classify 28 px."""
    x = torch.randn(2, 1, 28, 28)
    for prefix, expected_stride in (("small_", 1), ("small_pooled_", 2)):
        check_arch(prefix + base)
        model = create(prefix + base, 3, 1, 28).eval()
        conv = model.get_submodule(stem)
        assert conv.kernel_size == (3, 3) and conv.in_channels == 1
        pooled_by_stem = conv.stride == (2, 2)
        pooled_by_pool = pool is not None and not isinstance(model.get_submodule(pool), torch.nn.Identity)
        assert (2 if pooled_by_stem or pooled_by_pool else 1) == expected_stride
        with torch.no_grad():
            assert model(x).shape == (2, 3)


def test_small_stem_refused_for_other_families():
    with pytest.raises(UsageError, match="regnet"):
        check_arch("small_regnety_002")
    with pytest.raises(UsageError, match="not a single convolution"):
        check_arch("small_resnet18d")  # found before anything trains
    with pytest.raises(UsageError, match="not a single convolution"):
        create("small_resnet18d", 2, 1, 28)


def test_unknown_arch_suggests():
    with pytest.raises(UsageError) as info:
        create("resnet81", 2)
    assert "resnet18" in str(info.value)


def test_pretrained_loads_matching_tensors_and_rejects_foreign(tmp_path):
    source = create("medlite_dsconv", 5, 1, 28)
    path = tmp_path / "w.safetensors"
    save_state(source, path)
    target = create("medlite_dsconv", 2, 1, 28)  # new head: skipped, the rest loaded
    loaded, skipped = load_pretrained(target, path)
    assert loaded > 0 and skipped == 2
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)
    other = tmp_path / "other.safetensors"
    save_state(torch.nn.Linear(3, 3), other)
    with pytest.raises(UsageError, match="no tensor matches"):
        load_pretrained(create("medlite_dsconv", 2, 1, 28), other)
