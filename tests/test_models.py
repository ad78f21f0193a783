import subprocess
import sys

import pytest
import torch

from medlite.errors import UsageError
from medlite.models import (
    check_arch,
    count_params,
    create,
    is_model,
    kinds,
    known_names,
    list_models,
    parse_arch,
    register_composite,
    register_family,
    register_model,
    unregister,
)
from medlite.models.compact import DSConvNet
from medlite.models.composite import Ensemble, FusedStages, ensemble_arch, fused_arch
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


# -- the registry (issue 15: one front door, one parser, a kind = one registration) ------------------------

# One example of every registered family and composite kind; a new kind must add one here.
KIND_EXAMPLES = {
    "timm": "mobilenetv3_small_050",
    "small_pooled": "small_pooled_mobilenetv3_small_050",
    "small_vit": "small_vit_tiny_patch16_224",
    "small": "small_mobilenetv3_small_050",
    "torchvision": "torchvision/mobilenet_v3_small",
    "ensemble": "ensemble(medlite_cnn_tiny, medlite_dsconv_tiny)",
    "fused": "fused(medlite_dsconv_tiny)",
    "hybrid": "hybrid(medlite_cnn_tiny, medlite_dsconv_tiny)",
    "hybrid_gated": "hybrid_gated(medlite_cnn_tiny, medlite_dsconv_tiny)",
}


def test_every_registered_kind_has_an_example():
    registered = kinds()
    assert set(KIND_EXAMPLES) == set(registered["families"]) | set(registered["composites"])
    assert {"medlite_cnn", "medlite_cnn_tiny", "medlite_dsconv", "medlite_dsconv_tiny",
            "medlite_dsconv_wide"} <= set(registered["models"])


@pytest.mark.parametrize("arch", [*KIND_EXAMPLES.values(), *kinds()["models"]])
def test_each_kind_round_trips_check_and_create(arch):
    check_arch(arch)
    assert is_model(arch)
    assert str(parse_arch(str(parse_arch(arch)))) == str(parse_arch(arch))  # the printed tree reads back the same
    model = create(arch, 3, 1, 28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


# Parameter counts at 3 classes, grey 28 px, measured before the registry replaced the old if/elif chain.
BEFORE = {
    "medlite_dsconv": 139331,
    "medlite_dsconv_wide": 305763,
    "small_resnet18": 11169219,
    "small_pooled_efficientnet_b0": 4010815,
    "ensemble(medlite_dsconv,medlite_dsconv)": 278662,
    "fused(medlite_dsconv)": 140678,
}


@pytest.mark.parametrize("arch", BEFORE)
def test_names_build_the_same_models_as_before(arch):
    assert count_params(create(arch, 3, 1, 28)) == BEFORE[arch]


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_init_under_the_same_seed():
    """The registry builds what the classes build directly, drawing the same random numbers."""
    import timm

    def seeded(build):
        torch.manual_seed(0)
        return build()

    wide = lambda: DSConvNet(3, 1, 28, widths=(48, 96, 192, 384))  # noqa: E731
    assert _same_state(seeded(lambda: create("medlite_dsconv_wide", 3, 1, 28)), seeded(wide))
    assert _same_state(seeded(lambda: create("ensemble(medlite_dsconv,medlite_dsconv)", 3, 1, 28)),
                       seeded(lambda: Ensemble([DSConvNet(3), DSConvNet(3)])))
    assert _same_state(seeded(lambda: create("fused(medlite_dsconv)", 3, 1, 28)),
                       seeded(lambda: FusedStages(DSConvNet(3), 3, 1, 28)))
    small = seeded(lambda: create("small_resnet18", 3, 1, 28)).state_dict()
    plain = seeded(lambda: timm.create_model("resnet18", num_classes=3, in_chans=1)).state_dict()
    assert all(torch.equal(small[k], plain[k]) for k in plain if not k.startswith("conv1."))  # only the stem differs


def test_unknown_names_list_close_ones():
    with pytest.raises(UsageError, match=r"unknown architecture 'medlite_dsconvv'; did you mean .*medlite_dsconv"):
        check_arch("medlite_dsconvv")
    with pytest.raises(UsageError, match=r"unknown architecture 'torchvision/mobilenet_v3_smal'.*mobilenet_v3_small"):
        create("torchvision/mobilenet_v3_smal", 2)
    with pytest.raises(UsageError, match=r"no kind ensembel\(\.\.\.\); did you mean ensemble\(\.\.\.\)\?.*fused\(\.\.\.\)"):
        check_arch("ensembel(medlite_cnn,medlite_dsconv)")
    with pytest.raises(UsageError, match=r"unknown architecture 'medlite_cnnn'"):
        create("ensemble(medlite_dsconv, fused(medlite_cnnn))", 2)
    assert not is_model("medlite_dsconvv") and not is_model("small_regnety_002")


@pytest.mark.parametrize("arch, problem", [
    ("ensemble(medlite_cnn,medlite_dsconv", "expected ',' or '\\)'"),
    ("ensemble(medlite_cnn,)", "expected an architecture name"),
    ("fused()", "expected an architecture name"),
    ("medlite_cnn)", "unexpected '\\)'"),
    ("", "expected an architecture name"),
])
def test_malformed_names_are_usage_errors(arch, problem):
    with pytest.raises(UsageError, match=problem):
        check_arch(arch)


def test_composite_arity_is_checked_by_check_and_create():
    with pytest.raises(UsageError, match=r"fused\(\.\.\.\) takes exactly 1 architecture, not 2"):
        check_arch("fused(medlite_cnn,medlite_dsconv)")
    with pytest.raises(UsageError, match="exactly 1"):
        create("fused(medlite_cnn,medlite_dsconv)", 2)


def test_arch_names_are_built_by_the_composites():
    assert parse_arch(" ensemble( a ,fused(b) ) ").args[1].args[0].name == "b"
    assert ensemble_arch(["medlite_cnn", "fused(medlite_dsconv)"]) == "ensemble(medlite_cnn,fused(medlite_dsconv))"
    assert fused_arch("medlite_dsconv") == "fused(medlite_dsconv)"
    assert fused_arch("fused(medlite_dsconv)") == "fused(medlite_dsconv)"  # fused once
    assert fused_arch("ensemble(fused(a),b)") == "fused(ensemble(fused(a),b))"


def test_list_models_and_known_names():
    assert {"medlite_dsconv", "medlite_dsconv_tiny", "medlite_dsconv_wide"} <= set(list_models("medlite_dsconv*"))
    assert "small_pooled_resnet18" in list_models("small_pooled_*")
    assert "torchvision/mobilenet_v3_small" in known_names() and "resnet18" in known_names()


def test_a_new_kind_is_one_registration():
    """A model, a family and a composite (the shape of issue 19's hybrid(a,b)) plug in from here alone."""
    from torch import nn

    class Pair(nn.Module):
        def __init__(self, a: nn.Module, b: nn.Module) -> None:
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x):
            return self.a(x) + self.b(x)

    @register_model
    def test_linear(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))

    def build_wide(base, arch, num_classes, in_chans, img_size, pretrained):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, int(base)), nn.Linear(int(base), num_classes))

    @register_composite("test_pair", min_args=2, max_args=2)
    def build_pair(members, num_classes, in_chans, img_size, pretrained):
        return Pair(*(create(m, num_classes, in_chans, img_size, pretrained) for m in members))

    register_family("test_wide", "test_wide_", str.isdigit, build_wide, names=lambda: ["8", "16"])
    try:
        arch = "test_pair(test_linear, test_wide_16)"
        check_arch(arch)
        model = create(arch, 2, 1, 28)
        assert isinstance(model, Pair) and model(torch.randn(3, 1, 28, 28)).shape == (3, 2)
        assert count_params(model.b) == 784 * 16 + 16 + 16 * 2 + 2
        assert list_models("test_wide_*") == ["test_wide_16", "test_wide_8"]
        with pytest.raises(UsageError, match="takes exactly 2"):
            check_arch("test_pair(test_linear)")
        with pytest.raises(UsageError, match="'test_wide_x'"):
            check_arch("test_wide_x")
        with pytest.raises(UsageError, match="timm models only"):
            create("test_linear", 2, pretrained="imagenet")
    finally:
        for name in ("test_linear", "test_pair", "test_wide"):
            unregister(name)
    assert not is_model("test_linear") and not is_model("test_pair(test_linear,test_linear)")


def test_a_name_taken_by_another_module_is_refused():
    with pytest.raises(ValueError, match="already registered by medlite.models.compact"):
        register_model(lambda num_classes, in_chans=1, img_size=28: None, name="medlite_dsconv")


def test_students_offer_timms_interface():
    model = create("medlite_dsconv_tiny", 3, 1, 28).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.allclose(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, features)
        assert [(m.shape[1], 28 // m.shape[-1]) for m in maps] == [(i["num_chs"], i["reduction"]) for i in model.feature_info]
        assert [m.shape[1] for m in model.forward_intermediates(x, indices=[-1], intermediates_only=True)] == [128]
        assert len(model.forward_intermediates(x, indices=2)[1]) == 2
    assert model.get_classifier() is model.head
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[3])


def test_the_registry_and_the_recipe_schema_load_without_torch():
    code = ("import sys, medlite.models, medlite.models.registry, medlite.distill.config; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
