"""The families of models medlite builds from timm and torchvision, each registered by prefix.

- any timm name (`resnet18`, `mobilenetv3_small_050`, `efficientnet_b0`, ...): the timm model;
- `small_<timm model>` (`small_resnet18`, `small_efficientnet_b0`, `small_densenet121`): the timm model
  with its stem replaced by a 3x3 stride-1 convolution and its stem pooling dropped, the variant
  MedMNIST uses at 28 px (ResNet, EfficientNet, MobileNetV3, ConvNeXt and DenseNet families);
- `small_pooled_<timm model>`: the same 3x3 stem but keeping one 2x downsampling (the max-pool, or a
  stride-2 stem where the family has no pool): a quarter of the compute at 28 px, which trains 3-4x
  faster on a CPU;
- `small_vit_*` (`small_vit_tiny_patch16_224`, also `small_deit_*`): a timm ViT at the data's size with
  small patches;
- `torchvision/<name>` (`torchvision/mobilenet_v3_small`): a torchvision classifier.

timm and torchvision are imported inside the functions: they are heavy, and the registry answers
for our own students without them.
"""

from __future__ import annotations

from pathlib import Path

from medlite.errors import UsageError
from medlite.models.registry import IMAGENET, register_family

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


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _is_vit(name: str) -> bool:
    return name.startswith(("vit_", "deit_", "deit3_"))


def _timm_family(name: str) -> str:
    import timm

    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


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


# -- timm names as they are -------------------------------------------------------------------------------


def _build_timm(base: str, arch: str, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None):
    return _timm(base, num_classes, in_chans, img_size, pretrained)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


register_family("timm", "", _is_timm, _build_timm, names=_timm_names, imagenet=True)


# -- small_ and small_pooled_: a 3x3 stem for small images ------------------------------------------------


def check_small(arch: str, base: str, model=None) -> None:
    """Fail unless `base` has a stem `small_stem` can replace: a known family whose stem is one
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


def small_stem(model, arch: str, base: str, in_chans: int, keep_pool: bool = False):
    """Swap the stem for a 3x3 stride-1 convolution and drop the stem's pooling: keeps the detail of
    28 px images, which a stride-4 ImageNet stem would shrink to 7 x 7 before the first stage.
    `keep_pool` keeps one 2x downsampling (the pool, or stride 2 where the family has none)."""
    from torch import nn

    check_small(arch, base, model)
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


def _small_builder(keep_pool: bool):
    def build(base: str, arch: str, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None):
        model = _timm(base, num_classes, in_chans, img_size, pretrained)
        return small_stem(model, arch, base, in_chans, keep_pool=keep_pool)

    return build


def _check_small(base: str, arch: str) -> None:
    check_small(arch, base)


def _resnet_names() -> list[str]:
    import timm

    return timm.list_models("resnet*")


register_family("small_pooled", "small_pooled_", _is_timm, _small_builder(keep_pool=True), check=_check_small,
                names=_resnet_names, imagenet=True)


# -- small_vit_*: a ViT at the data's size with small patches (registered before small_: same prefix) ------


def small_patch(img_size: int) -> int:
    """Patch size of a `small_vit_*`: about 7-8 patches a side (28 px -> 4, 64 -> 8, 224 -> 16)."""
    for patch in (4, 8, 16):
        if img_size <= patch * 8 and img_size % patch == 0:
            return patch
    if img_size % 16 == 0:
        return 16
    raise UsageError(f"small_vit_*: image size {img_size} is not a multiple of 4, 8 or 16")


def _build_small_vit(base: str, arch: str, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None):
    return _timm(base, num_classes, in_chans, img_size, pretrained, patch_size=small_patch(img_size))


def _vit_names() -> list[str]:
    import timm

    return timm.list_models(["vit_*", "deit_*", "deit3_*"])


register_family("small_vit", "small_", lambda base: _is_vit(base) and _is_timm(base), _build_small_vit,
                names=_vit_names, imagenet=True)
register_family("small", "small_", _is_timm, _small_builder(keep_pool=False), check=_check_small,
                names=_resnet_names, imagenet=True)


# -- torchvision/<name> -----------------------------------------------------------------------------------


def _torchvision_names() -> list[str]:
    try:
        import torchvision
    except ImportError:  # pragma: no cover - torchvision is a dependency; without it the family is empty
        return []
    return torchvision.models.list_models(module=torchvision.models)


def _build_torchvision(name: str, arch: str, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None):
    import torch
    import torchvision
    from torch import nn

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


register_family("torchvision", "torchvision/", lambda name: name in _torchvision_names(), _build_torchvision,
                names=_torchvision_names)
