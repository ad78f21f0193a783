"""Batch-wise augmentation on tensors: one random affine (and intensity jitter) per image, no Python loop.

Presets are mild on purpose: medical images carry meaning in position and intensity,
so we flip, shift, rotate and scale a little, and never colour-jitter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PRESETS = {
    "none": None,
    "light": {"flip": 0.5, "degrees": 10.0, "translate": 0.08, "scale": (0.92, 1.08), "intensity": 0.0},
    "medium": {"flip": 0.5, "degrees": 20.0, "translate": 0.12, "scale": (0.85, 1.15), "intensity": 0.15},
}


def augment(x: torch.Tensor, preset: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float (N, C, H, W) in [0, 1]. Returns an augmented copy (same shape, range)."""
    params = PRESETS[preset]
    if params is None or len(x) == 0:
        return x
    n, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator).to(device) * (high - low) + low

    angle = uniform(-params["degrees"], params["degrees"]) * math.pi / 180
    scale = uniform(*params["scale"])
    shift_x = uniform(-params["translate"], params["translate"]) * 2
    shift_y = uniform(-params["translate"], params["translate"]) * 2
    flip = torch.where(torch.rand(n, generator=generator).to(device) < params["flip"], -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if params["intensity"]:
        gain = uniform(1 - params["intensity"], 1 + params["intensity"]).view(n, 1, 1, 1)
        bias = uniform(-params["intensity"] / 2, params["intensity"] / 2).view(n, 1, 1, 1)
        out = (out * gain + bias).clamp(0, 1)
    return out


def resize_to(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) at `size` x `size` (antialiased bilinear, as PIL's BILINEAR resize of deployment
    downsamples); `x` itself when already that size. How a cross-resolution student sees the view its
    teacher sees at the data's resolution."""
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., ICLR 2018) of a batch with a shuffled copy of itself: (mixed x, the partner
    of each image, lambda ~ Beta(alpha, alpha)). One lambda per batch, drawn from `generator` (seeded)."""
    # torch's Beta sampler takes no generator: numpy draws it, seeded from `generator`.
    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator))).beta(alpha, alpha))
    partner = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[partner], partner, lam
