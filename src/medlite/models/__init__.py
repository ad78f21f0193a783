"""`create(arch, num_classes, in_chans, img_size)`: one front door to every model medlite can train.

Names resolve in this order:
- our compact students: `medlite_cnn`, `medlite_dsconv` (and `_tiny` / `_wide` widths);
- `small_<timm resnet>` (e.g. `small_resnet18`): a timm ResNet with a 3x3 stride-1 stem and no
  max-pool, the variant MedMNIST uses at 28 px;
- `small_pooled_<timm resnet>`: the same 3x3 stride-1 stem but keeping the max-pool: a quarter of
  the compute at 28 px (14 x 14 maps in the first stage), which trains 3-4x faster on a CPU;
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


def _small_stem(model, in_chans: int, keep_maxpool: bool = False):
    """Swap a ResNet's 7x7/2 stem for a 3x3/1 stem (and drop its max-pool): keeps detail in 28 px images."""
    from torch import nn

    if not hasattr(model, "conv1") or not hasattr(model, "maxpool"):
        raise UsageError("small_*: only ResNet-style models (with conv1 and maxpool) have a small-input variant")
    out_channels = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, out_channels, 3, 1, 1, bias=False)
    if not keep_maxpool:
        model.maxpool = nn.Identity()
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
        model = _small_stem(model, in_chans, keep_maxpool=prefix == "small_pooled_")
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
