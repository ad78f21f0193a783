"""Models made of models, named by the architecture strings `ensemble(a,b,...)` and `fused(a)`.

Each is a composite kind of the model registry (`register_composite`), parsed by its one grammar.
Being architectures (plain `nn.Module`s built by `models.create`), they are saved, reloaded,
exported to ONNX and evaluated like any other model: the teachers' ensemble is one ONNX file,
and a multi-stage student keeps its fusion in the deployed file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medlite.models.registry import (  # noqa: F401 - the name helpers are re-exported
    ENSEMBLE, FUSED, create, ensemble_arch, fused_arch, register_composite,
)
from medlite.models.taps import FeatureTaps, stage_paths



class Ensemble(nn.Module):
    """The mean of the members' softmax probabilities (optionally weighted), returned as log-probabilities.

    log(mean p) is a valid logit vector: softmax(log p) = p, so evaluation and export need nothing special.
    `multilabel` (a plain attribute, not in the checkpoint: the data's task sets it): the mean of the
    members' per-label sigmoids, returned as its logit log(p) - log(1 - p), so sigmoid(logit) = mean p.
    """

    multilabel: bool = False

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            probs = torch.stack([torch.sigmoid(m(x)) for m in self.members], 0)
            mean = (probs * self.weights[:, None, None]).sum(0).clamp(1e-12, 1 - 1e-7)
            return torch.log(mean) - torch.log1p(-mean)
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members], 0)
        mean = (probs * self.weights[:, None, None]).sum(0)
        return torch.log(mean.clamp_min(1e-12))


class FusedStages(nn.Module):
    """`base` whose classifier sees the pooled features of all its stages, concatenated (layer fusion).

    The stages keep their module paths under `base.`, so they can be tapped (exits in multi-stage
    distillation). Only the fusion and the new head are added; the base's own head goes unused.
    """

    def __init__(self, base: nn.Module, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.base = base
        self._paths = stage_paths(base)
        with torch.no_grad():
            was = base.training
            base.eval()
            widths = [f.shape[1] for f in self._stage_features(torch.zeros(2, in_chans, img_size, img_size))]
            base.train(was)
        self.num_features = sum(widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def stage_paths(self) -> list[str]:
        return [f"base.{p}" for p in self._paths]

    def cam_backbone(self) -> str:
        """Explanations take their CAM layer from the base (a hybrid base then picks its backbone)."""
        return "base"

    def why_not_prunable(self) -> str | None:
        why = getattr(self.base, "why_not_prunable", None)
        return why() if callable(why) else None

    def _stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        from medlite.models.taps import as_map

        taps = FeatureTaps(self.base, self._paths)
        try:
            forward = getattr(self.base, "forward_features", self.base.forward)
            forward(x)
            caught = taps.take()
        finally:
            taps.remove()
        return [as_map(caught[p]) for p in self._paths]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [f.mean(dim=(2, 3)) for f in self._stage_features(x)]
        return self.head(self.dropout(torch.cat(pooled, dim=1)))


@register_composite(ENSEMBLE, min_args=1)
def _build_ensemble(members: list[str], num_classes: int, in_chans: int, img_size: int,
                    pretrained: str | Path | None) -> Ensemble:
    return Ensemble([create(m, num_classes, in_chans, img_size, pretrained) for m in members])


@register_composite(FUSED, min_args=1, max_args=1)
def _build_fused(members: list[str], num_classes: int, in_chans: int, img_size: int,
                 pretrained: str | Path | None) -> FusedStages:
    return FusedStages(create(members[0], num_classes, in_chans, img_size, pretrained), num_classes, in_chans, img_size)
