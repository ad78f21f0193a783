"""Feature taps: the outputs of named submodules, caught with forward hooks (the torchdistill way).

Any `nn.Module` can be tapped by module path (`stages.1`, `layer3`, `blocks.5`); no model has to
be rewritten. `stage_paths(model)` names a model's stages: `stages.N` for our compact students,
timm's `feature_info` for timm models (ResNets, EfficientNets, ViTs, ...), and the base model's
stages for the wrappers below (`fused(...)`).
"""

from __future__ import annotations

import difflib
import math

import torch
from torch import nn

from medlite.errors import UsageError

_STEM_NAMES = ("act1", "conv1", "bn1", "stem", "conv_stem", "bn_stem", "patch_embed")


class FeatureTaps:
    """Catch the outputs of `paths` on every forward of `model` until `remove()`.

    `outputs` maps path -> tensor of the latest forward; tuples keep their first element.
    """

    def __init__(self, model: nn.Module, paths: list[str], what: str = "model") -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for path in paths:
            if path not in modules:
                hints = difflib.get_close_matches(path, [n for n in modules if n], n=3)
                hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
                raise UsageError(f"no module {path!r} in the {what}{hint}; stages: {', '.join(stage_paths(model, strict=False)) or 'none'}")
            self.handles.append(modules[path].register_forward_hook(self._catch(path)))

    def _catch(self, path: str):
        def hook(module, inputs, output):
            self.outputs[path] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.outputs = self.outputs, {}
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def stage_paths(model: nn.Module, strict: bool = True) -> list[str]:
    """Module paths of the model's stages, shallow to deep."""
    if hasattr(model, "stage_paths"):  # wrappers that know their base (FusedStages)
        return list(model.stage_paths())
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and hasattr(model, "stem"):
        return [f"stages.{i}" for i in range(len(stages))]
    info = getattr(model, "feature_info", None)
    if info is not None:
        entries = info if isinstance(info, list) else getattr(info, "info", [])
        paths = [e["module"] for e in entries if isinstance(e, dict) and "module" in e]
        body = [p for p in paths if p.split(".")[0] not in _STEM_NAMES]
        if body:
            return body
    if strict:
        raise UsageError(f"{type(model).__name__}: no known stages to tap; name the module paths in the recipe")
    return []


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A feature as N x C x H x W: transformer tokens (N x L x C) become a map, prefix tokens dropped."""
    if feature.dim() == 4:
        return feature
    if feature.dim() == 3:
        n, length, c = feature.shape
        side = math.isqrt(length)
        if side * side != length:
            side = math.isqrt(length - 1)
        tokens = feature[:, length - side * side :, :]
        return tokens.transpose(1, 2).reshape(n, c, side, side)
    if feature.dim() == 2:
        return feature[:, :, None, None]
    raise ValueError(f"cannot read a feature of shape {tuple(feature.shape)} as a map")


def middle_stage(model: nn.Module) -> str:
    paths = stage_paths(model)
    return paths[(len(paths) - 1) // 2] if len(paths) > 1 else paths[0]
