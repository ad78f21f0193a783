"""Teachers by name (issue 19, item 6): the seven ImageNet families seed 001 lists, built through timm at the
data's size and run forward; a model whose feature map would shrink to nothing is refused naming its
minimum size, before any weights are built."""

from __future__ import annotations

import pytest
import torch

from medlite.errors import UsageError
from medlite.models.registry import check_arch, count_params, create

# seed 001's name -> medlite's at 28 px (a 3x3 stride-1 stem: small_) and as published
NAMED = {
    "VGG16": "vgg16",
    "VGG19": "vgg19",
    "ResNet50": "resnet50",
    "DenseNet121": "densenet121",
    "EfficientNetB3": "efficientnet_b3",
    "NASNetMobile": "nasnet_mobile",
    "Xception": "legacy_xception",
}


@pytest.fixture
def one_thread():
    """A forward pass of these at 28 px is ~0.1 s on one thread; on a loaded 2-core machine two threads
    spin against each other for seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("seed_name", sorted(NAMED))
def test_each_named_teacher_builds_at_28_px_and_classifies(seed_name, one_thread):
    arch = "small_" + NAMED[seed_name]
    check_arch(arch)
    model = create(arch, 3, 1, 28).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_nasnet_mobile_as_published_at_64_px(one_thread):
    model = create("nasnet_mobile", 2, 3, 64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    assert model.conv0.conv.stride == (2, 2)  # the published stem; small_nasnet_mobile's is stride 1
    with torch.device("meta"):  # Keras's NASNetMobile: 5,289,978 trainable parameters for 1000 classes
        assert count_params(create("nasnet_mobile", 1000, 3, 224)) == 5_289_978
    assert create("small_nasnet_mobile", 2, 1, 28).conv0.conv.stride == (1, 1)


def test_small_vgg_drops_its_first_pool_also_in_the_bn_variant():
    with torch.device("meta"):
        plain, bn = create("small_vgg16", 2, 1, 28), create("small_vgg16_bn", 2, 1, 28)
    assert isinstance(plain.features[4], torch.nn.Identity)  # conv relu conv relu [pool]
    assert isinstance(bn.features[6], torch.nn.Identity)  # conv bn relu conv bn relu [pool]
    assert isinstance(bn.features[1], torch.nn.BatchNorm2d)  # nothing else removed


@pytest.mark.parametrize("arch, need, hint", [
    ("vgg16", 32, "use small_vgg16"),
    ("densenet121", 29, "use small_densenet121"),
    ("small_pooled_vgg16", 32, "use small_vgg16"),  # VGG's pool kept: the ImageNet network as it is
    ("torchvision/vgg19", 32, "use small_vgg19"),
])
def test_a_model_that_cannot_take_the_input_is_refused_naming_its_minimum(arch, need, hint):
    with pytest.raises(UsageError, match=rf"'{arch}' cannot take 28 px images: its feature map shrinks to nothing "
                                         rf".*needs at least {need} px\); {hint}"):
        create(arch, 2, 1, 28)


def test_nasnet_mobile_has_no_imagenet_weights_to_load():
    with pytest.raises(UsageError, match=r"pretrained: imagenet: no ImageNet weights for 'nasnet_mobile'"):
        create("nasnet_mobile", 2, 3, 224, pretrained="imagenet")
