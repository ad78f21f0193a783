"""Hybrid two-backbone models: `hybrid(a,b)` and `hybrid_gated(a,b)`.

Both backbones see the same image; each gives its pooled features (its own classifier taken off with
timm's `reset_classifier(0)`), the two are fused, and one linear head classifies:

- `hybrid(a,b)`: the pooled features concatenated (C_a + C_b) -> dropout -> linear (stored as the
  linear map's two column blocks, `head.0` and `head.1`: see `Hybrid.__init__`);
- `hybrid_gated(a,b)`: each projected to d = min(C_a, C_b), summed with a learned per-feature gate
  g = sigmoid(W [f_a; f_b]): g * P_a f_a + (1 - g) * P_b f_b -> dropout -> linear.

`a` and `b` are any single models medlite builds that offer timm's interface (our compact students,
timm models, `small_*`, `small_vit_*`), e.g. `hybrid(small_vit_tiny_patch16_224,convnext_atto)` as a
teacher and `hybrid(medlite_cnn,small_efficientnet_b0)` as a student. A composite (ensemble, fused,
another hybrid) or a model without `reset_classifier` (torchvision/...) is refused naming it.

What the rest of medlite asks of it:
- feature taps: `stage_paths()` lists both backbones' stages (`backbones.0.stages.2`,
  `backbones.1.blocks.6`, ...), so FitNet / AT / SP can pair them and `fused(hybrid(...))` (multi-stage
  distillation) fuses the intermediate layers of both backbones before its head (layer fusion);
- explanations: `cam_backbone()` names the backbone Grad-CAM explains: the first one that is not a
  ViT (a convolutional map is what Grad-CAM was made for), else the first;
- structured pruning: `why_not_prunable()` names a backbone whose layers a pruned checkpoint could
  not be rebuilt from (anything with parameters but conv, linear and batch-norm: a ViT's tokens and
  LayerNorms, ConvNeXt's LayerNorms), so pruning refuses it in one line instead of failing later.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medlite.errors import UsageError, first_line
from medlite.models.registry import call_arch, create, parse_arch, register_composite
from medlite.models.taps import stage_paths

HYBRID, HYBRID_GATED = "hybrid", "hybrid_gated"
FUSIONS = {HYBRID: "concat", HYBRID_GATED: "gated"}


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


def _rebuildable(model: nn.Module) -> str | None:
    """The first module with parameters that `load_pruned_state` cannot rebuild at pruned widths, or None."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            return f"{name or '(root)'} ({type(module).__name__})"
    return None


class Hybrid(nn.Module):
    """Two backbones, their pooled features fused (`fusion`: concat or gated), one linear head."""

    def __init__(self, backbones: list[nn.Module], names: list[str], num_classes: int, in_chans: int,
                 img_size: int, fusion: str = "concat", dropout: float = 0.2) -> None:
        super().__init__()
        arch = call_arch(HYBRID if fusion == "concat" else HYBRID_GATED, *names)
        for name, model in zip(names, backbones):
            if not hasattr(model, "reset_classifier"):
                raise UsageError(f"{arch}: backbone {name!r} cannot be fused: it has no classifier to take off "
                                 "(timm's reset_classifier); use a timm model or a medlite_* student")
            model.reset_classifier(0)  # the backbone now returns its pooled features (N x C)
        self.backbones = nn.ModuleList(backbones)
        self.names = list(names)
        self.fusion = fusion
        widths = self._widths(arch, in_chans, img_size)
        self.num_features_each = widths
        # One linear map over the concatenation [f_a; f_b] is stored as its two column blocks
        # (W [f_a; f_b] = W_a f_a + W_b f_b, one bias): the same function, but no torch.cat of flattened
        # features, which torch-pruning 1.6 maps to the wrong input columns of the layer after it.
        if fusion == "concat":
            self.num_features = sum(widths)
        else:
            self.num_features = min(widths)
            self.project = nn.ModuleList([nn.Linear(w, self.num_features) for w in widths])
            self.gate = _split_linear(widths, self.num_features)
        self.dropout = nn.Dropout(dropout)
        self.head = _split_linear(widths if fusion == "concat" else [self.num_features], num_classes)

    def _widths(self, arch: str, in_chans: int, img_size: int) -> list[int]:
        """Each backbone's pooled width, from one dry forward at the real input size."""
        x = torch.zeros(2, in_chans, img_size, img_size)
        widths = []
        for name, model in zip(self.names, self.backbones):
            was = model.training
            model.eval()
            try:
                with torch.no_grad():
                    out = model(x)
            except (RuntimeError, ValueError, AssertionError) as err:
                first = first_line(err)
                raise UsageError(f"{arch}: backbone {name!r} cannot take {img_size} px images ({first[:160]})") from None
            finally:
                model.train(was)
            if out.dim() != 2:
                raise UsageError(f"{arch}: backbone {name!r} gives features of shape {tuple(out.shape)} without its "
                                 "classifier, not pooled N x C ones; it cannot be fused")
            widths.append(int(out.shape[1]))
        return widths

    # -- what the rest of medlite asks -----------------------------------------------------------------

    def stage_paths(self) -> list[str]:
        """Both backbones' stages, the first backbone's then the second's (shallow to deep in each)."""
        return [f"backbones.{i}.{p}" for i, model in enumerate(self.backbones) for p in stage_paths(model)]

    def cam_backbone(self) -> str:
        """The submodule Grad-CAM explains: the first backbone that is not a ViT, else the first."""
        for i, model in enumerate(self.backbones):
            if not _is_vit(model):
                return f"backbones.{i}"
        return "backbones.0"

    def why_not_prunable(self) -> str | None:
        for name, model in zip(self.names, self.backbones):
            layer = _rebuildable(model)
            if layer is not None:
                return (f"backbone {name!r} of this hybrid has {layer}: a pruned checkpoint can rebuild only conv, "
                        "linear and batch-norm layers; prune a hybrid of convolutional backbones (e.g. "
                        "hybrid(medlite_cnn,small_efficientnet_b0)) or leave it out of compress.targets")
        return None

    # -- forward ----------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Both backbones' pooled features, concatenated (N x (C_a + C_b)), without the fusion and head:
        what `fused(hybrid(...))` runs to tap the stages (the hybrid's own head stays out of its graph)."""
        return torch.cat([model(x) for model in self.backbones], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [model(x) for model in self.backbones]
        if self.fusion == "concat":  # head([f_a; f_b]), written as the sum of its column blocks
            return _apply(self.head, [self.dropout(f) for f in feats])
        gate = torch.sigmoid(_apply(self.gate, feats))  # sigmoid(W_g [f_a; f_b] + b_g), per fused feature
        a, b = (p(f) for p, f in zip(self.project, feats))
        return _apply(self.head, [self.dropout(gate * a + (1 - gate) * b)])


def _split_linear(widths: list[int], out: int) -> nn.ModuleList:
    """Linear(sum(widths) -> out) as one block per input part (the first carries the bias)."""
    return nn.ModuleList([nn.Linear(w, out, bias=i == 0) for i, w in enumerate(widths)])


def _apply(blocks: nn.ModuleList, parts: list[torch.Tensor]) -> torch.Tensor:
    out = blocks[0](parts[0])
    for block, part in zip(blocks[1:], parts[1:]):
        out = out + block(part)
    return out


def _check(kind: str):
    def check(members: list[str], arch: str) -> None:
        """Name-level: each backbone one single model (a composite has no one classifier to take off)."""
        for member in members:
            tree = parse_arch(member)
            if tree.composite:
                raise UsageError(f"{arch}: backbone {member!r} cannot be fused: a backbone is one model, not "
                                 f"{tree.name}(...); give two single models such as {kind}(medlite_cnn,small_efficientnet_b0)")

    return check


def _builder(kind: str):
    def build(members: list[str], num_classes: int, in_chans: int, img_size: int,
              pretrained: str | Path | None) -> Hybrid:
        _check(kind)(members, call_arch(kind, *members))
        # `pretrained` goes to each backbone only as ImageNet weights; a local file is the hybrid's own
        # checkpoint, loaded into the whole model (the registry loads no file into a composite).
        member_weights = pretrained if pretrained == "imagenet" else None
        backbones = [create(m, num_classes, in_chans, img_size, member_weights) for m in members]
        model = Hybrid(backbones, members, num_classes, in_chans, img_size, fusion=FUSIONS[kind])
        if pretrained and pretrained != "imagenet":
            from medlite.models.weights import load_pretrained  # here: weights loads safetensors

            load_pretrained(model, Path(pretrained))
        return model

    return build


register_composite(HYBRID, min_args=2, max_args=2, check=_check(HYBRID))(_builder(HYBRID))
register_composite(HYBRID_GATED, min_args=2, max_args=2, check=_check(HYBRID_GATED))(_builder(HYBRID_GATED))
