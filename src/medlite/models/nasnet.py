"""NASNet-A Mobile (Zoph et al. 2018, "4 @ 1056"), the NASNetMobile of Keras, built from timm's NASNet cells.

timm ships NASNet-A Large only (`nasnetalarge`, 6 @ 4032: six cells per stage, 4032 features). The
Mobile network is the same cell design at 4 cells per stage, a 32-channel stem and 1056 features:
timm's `NASNetALarge` class built at those widths (`stem_size=32, num_features=1056`), its cells 4-5,
10-11 and 16-17 removed and the forward walking the cells that remain (timm's own `layer_names` walk).
5.3 M parameters for 1000 classes, as Keras's NASNetMobile. No ImageNet weights here (timm has none for
it): it trains from random initialisation, and `pretrained: imagenet` is refused by the registry.

Registered names: `nasnet_mobile` (the network as published), `small_nasnet_mobile` (its stem convolution
3x3 stride 1: the stride-16 network small images need) and `small_pooled_nasnet_mobile` (stem stride 2),
as the `small_` / `small_pooled_` families do for timm models (`medlite.models.families.small_stem`).
"""

from __future__ import annotations

from medlite.models.registry import register_model

_DROPPED = ("cell_4", "cell_5", "cell_10", "cell_11", "cell_16", "cell_17")


def _nasnet_mobile_class():
    from timm.models.nasnet import NASNetALarge, ReductionCell0, ReductionCell1

    class NASNetAMobile(NASNetALarge):
        """NASNet-A Mobile (4 @ 1056)."""

        def __init__(self, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> None:
            super().__init__(num_classes=num_classes, in_chans=in_chans, stem_size=32, num_features=1056,
                             channel_multiplier=2, **kwargs)
            for name in _DROPPED:
                delattr(self, name)
            c = self.num_features // 24
            self.layer_names = [n for n in self.layer_names if n not in _DROPPED]
            self.feature_ends = [self.layer_names.index(n) for n in ("conv0", "cell_stem_0", "cell_3", "cell_9", "cell_15")]
            self.feature_info = [
                dict(num_chs=self.stem_size, reduction=2, module="conv0"),
                dict(num_chs=c, reduction=4, module="cell_stem_1.conv_1x1.act"),
                dict(num_chs=6 * c, reduction=8, module="reduction_cell_0.conv_1x1.act"),
                dict(num_chs=12 * c, reduction=16, module="reduction_cell_1.conv_1x1.act"),
                dict(num_chs=24 * c, reduction=32, module="act"),
            ]

        def forward_features(self, x):
            # timm's walk (NASNetALarge.forward_intermediates): each cell takes the two previous outputs; a
            # reduction cell's successor takes the same previous output as the reduction cell did.
            x_prev = x
            for i, name in enumerate(self.layer_names):
                layer = getattr(self, name)
                if i < 2:
                    x_prev, x = x, layer(x)
                elif i == 2:
                    x_prev, x = x, layer(x_prev, x)
                elif isinstance(layer, (ReductionCell0, ReductionCell1)):
                    x = layer(x, x_prev)
                else:
                    x_prev, x = x, layer(x, x_prev)
            return self.act(x)

    return NASNetAMobile


def _build(num_classes: int, in_chans: int, small: str | None):
    model = _nasnet_mobile_class()(num_classes=num_classes, in_chans=in_chans)
    if small is None:
        return model
    from medlite.models.families import small_stem

    return small_stem(model, small, "nasnet_mobile", in_chans, keep_pool=small.startswith("small_pooled_"), family="nasnet")


def _guarded(arch: str, num_classes: int, in_chans: int, img_size: int, small: str | None):
    from medlite.models.families import refuse_small_input

    refuse_small_input(arch, "nasnet_mobile", lambda: _build(num_classes, in_chans, small), in_chans, img_size,
                       family="nasnet")
    return _build(num_classes, in_chans, small)


@register_model
def nasnet_mobile(num_classes: int, in_chans: int = 3, img_size: int = 224):
    return _guarded("nasnet_mobile", num_classes, in_chans, img_size, None)


@register_model
def small_nasnet_mobile(num_classes: int, in_chans: int = 3, img_size: int = 28):
    return _guarded("small_nasnet_mobile", num_classes, in_chans, img_size, "small_nasnet_mobile")


@register_model
def small_pooled_nasnet_mobile(num_classes: int, in_chans: int = 3, img_size: int = 28):
    return _guarded("small_pooled_nasnet_mobile", num_classes, in_chans, img_size, "small_pooled_nasnet_mobile")
