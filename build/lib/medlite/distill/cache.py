"""A bank of fixed augmented views with the teacher's logits, computed once before distillation.

The teacher is frozen, so its output for a given input never changes. Drawing each epoch's
images from a fixed set of augmented views lets us run the teacher once per view instead of
once per step: a distillation epoch then costs the same as a scratch-student epoch.
"""

from __future__ import annotations

import torch

from medlite.train.augment import augment

MAX_BANK_BYTES = 1 << 30  # keep the bank under 1 GiB of uint8 images


@torch.no_grad()
def build_teacher_bank(
    teacher: torch.nn.Module,
    images: torch.Tensor,
    *,
    views: int,
    augment_preset: str,
    mean: float,
    std: float,
    seed: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(views x N x C x H x W uint8 images, views x N x K float32 logits). View 0 is unaugmented."""
    per_view = images.numel()
    views = max(1, min(views, MAX_BANK_BYTES // max(1, per_view)))
    if augment_preset == "none":
        views = 1
    generator = torch.Generator().manual_seed(seed)
    teacher = teacher.eval().to(device)
    bank_images, bank_logits = [], []
    for view in range(views):
        view_images, view_logits = [], []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float() / 255
            if view > 0:
                x = augment(x, augment_preset, generator)
            # Round to uint8 first, so the teacher sees exactly the pixels the student will see.
            x8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
            view_images.append(x8)
            view_logits.append(teacher((x8.float() / 255 - mean) / std).float())
        bank_images.append(torch.cat(view_images))
        bank_logits.append(torch.cat(view_logits))
    return torch.stack(bank_images), torch.stack(bank_logits)
