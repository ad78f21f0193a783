"""The CIFAR ResNets of the distillation literature: `resnet8x4` and `resnet32x4`.

As defined in CRD (Tian et al. 2020, github.com/HobbitLong/RepDistiller, models/resnet.py) and used by
DKD (Zhao et al. 2022, github.com/megvii-research/mdistiller): a 3x3 stride-1 stem, three stages of
(depth - 2) / 6 basic blocks at widths 64, 128, 256 (the "x4": four times ResNet-20's 16, 32, 64, with
a 32-wide stem), strides 1, 2, 2, global average pooling, one linear layer. About 1.2 M (8x4) and
7.4 M (32x4) parameters for 100 classes. timm has no such models; they share `compact`'s interface
(stem + stages: feature taps, `forward_intermediates`), so every distillation method can tap them.
One change from the original: adaptive average pooling instead of AvgPool2d(8), the same at 32 px
and usable at other sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from medlite.models.compact import _Classifier
from medlite.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (a 1x1 strided projection when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(_Classifier):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_chans: int = 3) -> None:
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth {depth}: must be 6n + 2")
        super().__init__(widths[3], num_classes, dropout=0.0)
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            stage = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.widths = widths

    @property
    def feature_info(self) -> list[dict]:
        # Each stage downsamples once (its first block; the projection runs beside, not after, the conv).
        return [{"module": f"stages.{i}", "num_chs": self.widths[i + 1], "reduction": 2 ** i} for i in range(3)]


@register_model
def resnet8x4(num_classes: int, in_chans: int = 3, img_size: int = 32) -> CifarResNet:
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_chans)


@register_model
def resnet32x4(num_classes: int, in_chans: int = 3, img_size: int = 32) -> CifarResNet:
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_chans)
