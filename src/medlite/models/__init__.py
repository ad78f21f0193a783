"""`create(arch, num_classes, in_chans, img_size)`: one front door to every model medlite can train.

Names resolve in this order:
- our compact students: `medlite_cnn`, `medlite_dsconv` (and `_tiny` / `_wide` widths);
- `small_<timm model>` (e.g. `small_resnet18`, `small_efficientnet_b0`, `small_densenet121`): the
  timm model with its stem replaced by a 3x3 stride-1 convolution and its stem pooling dropped, the
  variant MedMNIST uses at 28 px (ResNet, EfficientNet, MobileNetV3, ConvNeXt and DenseNet families);
- `small_pooled_<timm model>`: the same 3x3 stem but keeping one 2x downsampling (the max-pool, or a
  stride-2 stem where the family has no pool): a quarter of the compute at 28 px, which trains 3-4x
  faster on a CPU;
- `torchvision/<name>` (e.g. `torchvision/mobilenet_v3_small`): a torchvision classifier;
- any other name: a timm model (`resnet18`, `mobilenetv3_small_050`, `efficientnet_b0`, ...).
"""

from __future__ import annotations

import difflib
from functools import partial
from pathlib import Path
from typing import Callable

from medlite.errors import UsageError

OWN_MODELS: dict[str, Callable] = {}


def _own_models() -> dict[str, Callable]:
    if not OWN_MODELS:
        from medlite.models.compact import DSConvNet, PlainCNN

        OWN_MODELS.update(
            {
                "medlite_cnn": PlainCNN,
                "medlite_cnn_tiny": partial(PlainCNN, widths=(12, 24, 48)),
                "medlite_dsconv": DSConvNet,
                "medlite_dsconv_tiny": partial(DSConvNet, widths=(16, 32, 64, 128)),
                "medlite_dsconv_wide": partial(DSConvNet, widths=(48, 96, 192, 384)),
            }
        )
    return OWN_MODELS


SMALL_PREFIXES = ("small_pooled_", "small_")


def _split_small(arch: str) -> tuple[str | None, str]:
    """'small_pooled_resnet18' -> ('small_pooled_', 'resnet18'); names without a prefix -> (None, arch)."""
    for prefix in SMALL_PREFIXES:
        if arch.startswith(prefix):
            return prefix, arch[len(prefix):]
    return None, arch


# The stem of each timm family that has a small-input variant: (its first convolution, the pooling
# right after it or None), as dotted attribute paths. Keyed by the timm module that defines the model,
# so `check_arch` can answer from the name without building anything.
SMALL_STEMS: dict[str, tuple[str, str | None]] = {
    "resnet": ("conv1", "maxpool"),
    "efficientnet": ("conv_stem", None),
    "mobilenetv3": ("conv_stem", None),
    "convnext": ("stem.0", None),
    "densenet": ("features.conv0", "features.pool0"),
}


def _timm_family(name: str) -> str:
    import timm

    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def _check_small(arch: str, base: str, model=None) -> None:
    """Fail unless `base` has a stem `_small_stem` can replace: a known family whose stem is one
    convolution (not e.g. resnet18d's three). Without `model`, one is built on the meta device:
    the layout without allocating any weights."""
    import torch
    from torch import nn

    family = _timm_family(base)
    if family not in SMALL_STEMS:
        raise UsageError(f"{arch!r}: no small-input stem for timm's {family} models; small_* supports the "
                         f"{', '.join(sorted(SMALL_STEMS))} families (or use {base!r} as it is)")
    if model is None:
        import timm

        with torch.device("meta"):
            model = timm.create_model(base, pretrained=False)
    try:
        conv = model.get_submodule(SMALL_STEMS[family][0])
    except AttributeError:
        conv = None
    if not isinstance(conv, nn.Conv2d):
        raise UsageError(f"{arch!r}: the stem of {base!r} is not a single convolution; use {base!r} as it is")


def _small_stem(model, arch: str, base: str, in_chans: int, keep_pool: bool = False):
    """Swap the stem for a 3x3 stride-1 convolution and drop the stem's pooling: keeps the detail of
    28 px images, which a stride-4 ImageNet stem would shrink to 7 x 7 before the first stage.
    `keep_pool` keeps one 2x downsampling (the pool, or stride 2 where the family has none)."""
    from torch import nn

    _check_small(arch, base, model)
    conv_path, pool_path = SMALL_STEMS[_timm_family(base)]
    parent_path, _, conv_name = conv_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    conv = getattr(parent, conv_name)
    stride = 2 if keep_pool and pool_path is None else 1
    setattr(parent, conv_name, nn.Conv2d(in_chans, conv.out_channels, 3, stride, 1, bias=conv.bias is not None))
    if pool_path and not keep_pool:
        pool_parent_path, _, pool_name = pool_path.rpartition(".")
        pool_parent = model.get_submodule(pool_parent_path) if pool_parent_path else model
        setattr(pool_parent, pool_name, nn.Identity())
    return model


def _torchvision(name: str, num_classes: int, in_chans: int):
    import torch
    import torchvision
    from torch import nn

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise KeyError(name)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_chans != 3:
        # Replace the first convolution so the model takes grey (or any-channel) images.
        for parent in model.modules():
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                    new = nn.Conv2d(in_chans, child.out_channels, child.kernel_size, child.stride, child.padding,
                                    bias=child.bias is not None)
                    with torch.no_grad():
                        new.weight.copy_(child.weight.mean(1, keepdim=True).repeat(1, in_chans, 1, 1))
                    setattr(parent, child_name, new)
                    return model
    return model


def known_names() -> list[str]:
    import timm

    names = list(_own_models()) + timm.list_models()
    names += [f"{p}{n}" for p in SMALL_PREFIXES for n in timm.list_models("resnet*")]
    try:
        import torchvision

        names += [f"torchvision/{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    except ImportError:  # pragma: no cover
        pass
    return names


def unknown_arch(arch: str) -> UsageError:
    hints = difflib.get_close_matches(arch, known_names(), n=3, cutoff=0.6)
    suggestion = f"; did you mean {', '.join(hints)}?" if hints else "; see `timm.list_models()` or use medlite_dsconv"
    return UsageError(f"unknown architecture {arch!r}{suggestion}")


def check_arch(arch: str) -> None:
    """Fail fast (before any data is read or model trained) on an architecture name we cannot build."""
    import timm

    from medlite.models.composite import split_composite

    composite = split_composite(arch)
    if composite:
        for part in composite[1]:
            check_arch(part)
        if composite[0] == "fused" and len(composite[1]) != 1:
            raise UsageError(f"{arch!r}: fused(...) wraps exactly one architecture")
        return
    if arch in _own_models() or timm.is_model(arch):
        return
    prefix, base = _split_small(arch)
    if prefix and timm.is_model(base):
        if not (prefix == "small_" and _is_vit(base)):
            _check_small(arch, base)
        return
    if arch.startswith("torchvision/"):
        import torchvision

        if arch.split("/", 1)[1] in torchvision.models.list_models(module=torchvision.models):
            return
    raise unknown_arch(arch)


def _is_vit(name: str) -> bool:
    return name.startswith(("vit_", "deit_", "deit3_"))


def small_patch(img_size: int) -> int:
    """Patch size of a `small_vit_*`: about 7-8 patches a side (28 px -> 4, 64 -> 8, 224 -> 16)."""
    for patch in (4, 8, 16):
        if img_size <= patch * 8 and img_size % patch == 0:
            return patch
    if img_size % 16 == 0:
        return 16
    raise UsageError(f"small_vit_*: image size {img_size} is not a multiple of 4, 8 or 16")


def _timm(name: str, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None, **kwargs):
    import timm

    if _is_vit(name):
        kwargs.setdefault("img_size", img_size)  # timm resamples position embeddings (and patch weights) to fit
    if pretrained == IMAGENET:
        from medlite.models.weights import imagenet_file

        overlay = {"file": str(imagenet_file(name))}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                 num_classes=num_classes, in_chans=in_chans, **kwargs)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


IMAGENET = "imagenet"


def create(arch: str, num_classes: int, in_chans: int = 1, img_size: int = 28, pretrained: str | Path | None = None):
    """Build a classifier by name; optionally load weights: a local file (safetensors or a timm
    checkpoint) or `imagenet` (timm's ImageNet weights from the Hugging Face hub, cached in the user cache).

    Composite names: `ensemble(a,b,...)` (mean of the members' probabilities, see `composite.Ensemble`)
    and `fused(a)` (a's stages fused before a new classifier, see `composite.FusedStages`).
    `small_vit_*` (e.g. `small_vit_tiny_patch16_224`): a timm ViT at the data's size with small patches.
    """
    import timm

    from medlite.models.composite import Ensemble, FusedStages, split_composite

    composite = split_composite(arch)
    if composite:
        kind, parts = composite
        members = [create(p, num_classes, in_chans, img_size, pretrained) for p in parts]
        if kind == "ensemble":
            return Ensemble(members)
        return FusedStages(members[0], num_classes, in_chans, img_size)
    own = _own_models()
    if pretrained == IMAGENET and (arch in own or arch.startswith("torchvision/")):
        raise UsageError(f"pretrained: imagenet: no ImageNet weights for {arch!r} (timm models only); give a local .safetensors file")
    if arch in own:
        model = own[arch](num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    elif arch.startswith("torchvision/"):
        try:
            model = _torchvision(arch.split("/", 1)[1], num_classes, in_chans)
        except KeyError:
            raise unknown_arch(arch) from None
    elif _split_small(arch)[0] == "small_" and _is_vit(_split_small(arch)[1]) and timm.is_model(_split_small(arch)[1]):
        base = _split_small(arch)[1]
        model = _timm(base, num_classes, in_chans, img_size, pretrained, patch_size=small_patch(img_size))
    elif _split_small(arch)[0] and timm.is_model(_split_small(arch)[1]):
        prefix, base = _split_small(arch)
        model = _timm(base, num_classes, in_chans, img_size, pretrained)
        model = _small_stem(model, arch, base, in_chans, keep_pool=prefix == "small_pooled_")
    elif timm.is_model(arch):
        model = _timm(arch, num_classes, in_chans, img_size, pretrained)
    else:
        raise unknown_arch(arch)
    if pretrained and pretrained != IMAGENET:
        from medlite.models.weights import load_pretrained

        load_pretrained(model, Path(pretrained))
    return model


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
