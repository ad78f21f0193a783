"""Compact students of our own: plain `nn.Module`s whose stages can be tapped for feature distillation."""

from __future__ import annotations

import torch
from torch import nn


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
        """timm's description of the taps: module path and channels of each stage (see models.taps)."""
        info = []
        for i, stage in enumerate(self.stages):
            convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
            info.append({"module": f"stages.{i}", "num_chs": convs[-1].out_channels})
        return info

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.forward_features(x)).flatten(1)
        return self.head(self.dropout(features))


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
