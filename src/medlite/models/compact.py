"""Compact students of our own: plain `nn.Module`s whose stages can be tapped for feature distillation.

They offer timm's model interface (`forward_features`, `forward_head`, `forward_intermediates`,
`feature_info`, `get_classifier` / `reset_classifier`), so code written for timm models takes them
as they are; each is registered by name (`@register_model`, the timm way).
"""

from __future__ import annotations

import torch
from torch import nn

from medlite.models.registry import register_model


def _stem_stride(img_size: int) -> int:
    """Keep spatial detail at MedMNIST's 28 px; downsample early on larger inputs to stay fast."""
    return 1 if img_size <= 32 else 2


def conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Module):
    """MobileNet-v1 block: depthwise 3x3 then pointwise 1x1, each with BN and ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = conv_bn_relu(cin, cin, stride, groups=cin)
        self.pointwise = conv_bn_relu(cin, cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _Classifier(nn.Module):
    """stem -> stages -> global average pool -> dropout -> linear. `stages` are the feature taps."""

    stem: nn.Module
    stages: nn.Sequential

    def __init__(self, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    @property
    def feature_info(self) -> list[dict]:
        """timm's description of the taps: module path, channels and stride of each stage (see models.taps)."""
        info, reduction = [], _stride(self.stem)
        for i, stage in enumerate(self.stages):
            convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
            reduction *= _stride(stage)
            info.append({"module": f"stages.{i}", "num_chs": convs[-1].out_channels, "reduction": reduction})
        return info

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.dropout(self.pool(x).flatten(1))
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's interface: the outputs of the stages `indices` (None: all; n: the last n; a list: those,
        negative from the end) and the final features. `norm` is accepted for timm's signature (no final norm here)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: these models give NCHW features only")
        take = _take_indices(len(self.stages), indices)
        intermediates, x = [], self.stem(x)
        last = max(take) if stop_early or intermediates_only else len(self.stages) - 1
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for `num_classes` (0: none, the model then returns pooled features)."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _stride(module: nn.Module) -> int:
    """The downsampling of a stem or stage: the product of its convolutions' strides."""
    out = 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            out *= m.stride[0]
    return out


def _take_indices(n: int, indices: int | list[int] | None) -> list[int]:
    """timm's rule for `forward_intermediates(indices=...)`: None: all n; an int k: the last k; a list: those."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {n})")
        return list(range(n - indices, n))
    take = [n + i if i < 0 else i for i in indices]
    if not take or any(not 0 <= i < n for i in take):
        raise ValueError(f"feature indices {list(indices)} out of range (0 to {n - 1})")
    return take


class PlainCNN(_Classifier):
    """A small VGG-style CNN: three stages of two 3x3 convs, each stage halving the resolution."""

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, widths=(24, 48, 96), dropout=0.2):
        super().__init__(widths[-1], num_classes, dropout)
        self.stem = conv_bn_relu(in_chans, widths[0], _stem_stride(img_size))
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stages.append(nn.Sequential(conv_bn_relu(cin, cout, stride=1 if i == 0 else 2), conv_bn_relu(cout, cout)))
            cin = cout
        self.stages = nn.Sequential(*stages)


class DSConvNet(_Classifier):
    """A MobileNet-v1-style student of depthwise-separable blocks (about 1/80 of a ResNet-18)."""

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, widths=(32, 64, 128, 256), dropout=0.2):
        super().__init__(widths[-1], num_classes, dropout)
        self.stem = conv_bn_relu(in_chans, widths[0], _stem_stride(img_size))
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            stages.append(nn.Sequential(DepthwiseSeparable(cin, cout, stride=2 if i > 0 else 1), DepthwiseSeparable(cout, cout)))
            cin = cout
        self.stages = nn.Sequential(*stages)


# -- the registered names (timm's way: one function per name) ---------------------------------------------


@register_model
def medlite_cnn(num_classes: int, in_chans: int = 1, img_size: int = 28) -> PlainCNN:
    return PlainCNN(num_classes, in_chans, img_size)


@register_model
def medlite_cnn_tiny(num_classes: int, in_chans: int = 1, img_size: int = 28) -> PlainCNN:
    return PlainCNN(num_classes, in_chans, img_size, widths=(12, 24, 48))


@register_model
def medlite_dsconv(num_classes: int, in_chans: int = 1, img_size: int = 28) -> DSConvNet:
    return DSConvNet(num_classes, in_chans, img_size)


@register_model
def medlite_dsconv_tiny(num_classes: int, in_chans: int = 1, img_size: int = 28) -> DSConvNet:
    return DSConvNet(num_classes, in_chans, img_size, widths=(16, 32, 64, 128))


@register_model
def medlite_dsconv_wide(num_classes: int, in_chans: int = 1, img_size: int = 28) -> DSConvNet:
    return DSConvNet(num_classes, in_chans, img_size, widths=(48, 96, 192, 384))
