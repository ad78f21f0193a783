"""The families of models medlite builds from timm and torchvision, each registered by prefix.

- any timm name (`resnet18`, `mobilenetv3_small_050`, `efficientnet_b0`, ...): the timm model;
- `small_<timm model>` (`small_resnet18`, `small_efficientnet_b0`, `small_densenet121`): the timm model
  with its stem replaced by a 3x3 stride-1 convolution and its stem pooling dropped, the variant
  MedMNIST uses at 28 px (ResNet, EfficientNet, MobileNetV3, ConvNeXt, DenseNet, VGG (its first
  max-pool), Xception and NASNet families);
- `small_pooled_<timm model>`: the same 3x3 stem but keeping one 2x downsampling (the max-pool, or a
  stride-2 stem where the family has no pool): a quarter of the compute at 28 px, which trains 3-4x
  faster on a CPU;
- `small_vit_*` (`small_vit_tiny_patch16_224`, also `small_deit_*`): a timm ViT at the data's size with
  small patches;
- `torchvision/<name>` (`torchvision/mobilenet_v3_small`): a torchvision classifier.

Every CNN is first probed at the requested input size on the meta device (`refuse_small_input`): one
whose feature map would shrink to nothing is refused naming the smallest size it takes.

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
FIRST_POOL = "<first max-pool of features>"
SMALL_STEMS: dict[str, tuple[str, str | None]] = {
    "resnet": ("conv1", "maxpool"),
    "efficientnet": ("conv_stem", None),
    "mobilenetv3": ("conv_stem", None),
    "convnext": ("stem.0", None),
    "densenet": ("features.conv0", "features.pool0"),
    # VGG's first convolution is already 3x3 stride 1: its "stem pooling" is the first max-pool of
    # `features` (found per model: its index moves in the _bn variants), dropped by small_.
    "vgg": ("features.0", FIRST_POOL),
    "xception": ("conv1", None),  # legacy_xception (Chollet's Xception): a 3x3 stride-2 stem
    "nasnet": ("conv0.conv", None),  # nasnetalarge, and medlite's nasnet_mobile (models/nasnet.py)
}


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


_VIT_MODULES = ("vision_transformer", "deit", "eva", "beit", "cait", "xcit")


def _is_vit(name: str) -> bool:
    """A timm transformer with patch embeddings (built at the data's size), by name or by timm's module
    (timm's `test_vit` has no vit_ prefix)."""
    if name.startswith(("vit_", "deit_", "deit3_")):
        return True
    try:
        return _timm_family(name).startswith(_VIT_MODULES)
    except Exception:  # noqa: BLE001 - not a timm name (torchvision/..., a medlite model)
        return False


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


# -- the input size a model can take ------------------------------------------------------------------------

_fits: dict[tuple[str, int, int], int | None] = {}


def _runs(model, in_chans: int, size: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.empty(2, in_chans, size, size, device="meta"))
    except (RuntimeError, ValueError, IndexError, AssertionError):  # timm's patch embeds assert on the size
        return False
    return True


def minimum_input(arch: str, make, in_chans: int, img_size: int) -> int | None:
    """None when `make()` (a builder without weights) takes `img_size` px images; else the smallest size
    it takes. Found on the meta device (shapes only, no weights, no arithmetic): a pooling or convolution
    whose input shrank below its window fails there as it would on real images. Probed once per
    (arch, channels, size). A model that also fails at 224 px is not this check's to judge (None)."""
    key = (arch, in_chans, img_size)
    if key not in _fits:
        import torch

        with torch.device("meta"):
            model = make().eval()
        # From 224 px up (ImageNet's size) or when 224 fails too, the failure is not about the size.
        if img_size >= 224 or _runs(model, in_chans, img_size) or not _runs(model, in_chans, 224):
            _fits[key] = None
        else:
            low, high = img_size, 224  # fails at low, runs at high
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (low, mid) if _runs(model, in_chans, mid) else (mid, high)
            _fits[key] = high
    return _fits[key]


def refuse_small_input(arch: str, base: str, make, in_chans: int, img_size: int, family: str | None = None) -> None:
    """A UsageError (before any weights are built) when the model's feature map would shrink to nothing
    at `img_size`: it names the smallest size it takes and, where the family has one, the small_ stem."""
    need = minimum_input(arch, make, in_chans, img_size)
    if need is None:
        return
    small = f"small_{base}"
    if family is None:
        try:
            family = _timm_family(base)
        except Exception:  # noqa: BLE001 - not a timm name (torchvision/...): no small_ variant to suggest
            family = None
    hint = f"use {small} (a 3x3 stem for small images) or " if family in SMALL_STEMS and arch != small else "use "
    raise UsageError(f"{arch!r} cannot take {img_size} px images: its feature map shrinks to nothing before the head "
                     f"(it needs at least {need} px); {hint}data.image_size: {need} or more")


# -- timm names as they are -------------------------------------------------------------------------------


def _build_timm(base: str, arch: str, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None):
    if not _is_vit(base):  # a ViT is built at the data's size (its patches fit), a CNN may not fit it
        refuse_small_input(arch, base, lambda: _timm(base, num_classes, in_chans, img_size, None), in_chans, img_size)
    return _timm(base, num_classes, in_chans, img_size, pretrained)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


register_family("timm", "", _is_timm, _build_timm, names=_timm_names, imagenet=True)


# -- small_ and small_pooled_: a 3x3 stem for small images ------------------------------------------------


def _stem_paths(family: str, model) -> tuple[str, str | None]:
    conv, pool = SMALL_STEMS[family]
    if pool == FIRST_POOL:
        from torch import nn

        pool = next((f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)), None)
    return conv, pool


def check_small(arch: str, base: str, model=None, family: str | None = None) -> None:
    """Fail unless `base` has a stem `small_stem` can replace: a known family whose stem is one
    convolution (not e.g. resnet18d's three). Without `model`, one is built on the meta device:
    the layout without allocating any weights. `family`: for a model timm does not know by name."""
    import torch
    from torch import nn

    family = family or _timm_family(base)
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


def small_stem(model, arch: str, base: str, in_chans: int, keep_pool: bool = False, family: str | None = None):
    """Swap the stem for a 3x3 stride-1 convolution and drop the stem's pooling: keeps the detail of
    28 px images, which a stride-4 ImageNet stem would shrink to 7 x 7 before the first stage.
    `keep_pool` keeps one 2x downsampling (the pool, or stride 2 where the family has none)."""
    from torch import nn

    family = family or _timm_family(base)
    check_small(arch, base, model, family)
    conv_path, pool_path = _stem_paths(family, model)
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
        def bare():
            return small_stem(_timm(base, num_classes, in_chans, img_size, None), arch, base, in_chans, keep_pool=keep_pool)

        refuse_small_input(arch, base, bare, in_chans, img_size)
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
    refuse_small_input(arch, name, lambda: _torchvision_model(name, num_classes, in_chans), in_chans, img_size)
    return _torchvision_model(name, num_classes, in_chans)


def _torchvision_model(name: str, num_classes: int, in_chans: int):
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
