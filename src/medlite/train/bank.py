"""The teacher bank: fixed augmented views with the teachers' logits, computed once before distillation.

Part of the training data (`medlite.train.data.TrainData` builds it), so it lives in `train`.

A teacher is frozen, so its output for a given input never changes. Drawing each epoch's images
from a fixed set of augmented views lets us run each teacher once per view instead of once per
step: a logit-distillation epoch then costs about what a scratch-student epoch costs. The logits
are kept per teacher (views x N x teachers x classes), so an ensemble is softened and averaged
at the method's own temperature. With no teacher the bank holds only the views: the scratch
baseline trains on exactly the images the distilled student sees, so the comparison is fair.
"""

from __future__ import annotations

import torch

from medlite.train.augment import augment

MAX_BANK_BYTES = 1 << 30  # keep the bank under 1 GiB of uint8 images


@torch.no_grad()
def build_teacher_bank(
    teacher: torch.nn.Module | list[torch.nn.Module] | None,
    images: torch.Tensor,
    *,
    views: int,
    augment_preset: str,
    mean: float,
    std: float,
    seed: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    teacher_sizes: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(views x N x C x H x W uint8 images, views x N x teachers x K float32 logits, or None without teachers).

    Every view is augmented (unless the preset is "none"): a short fine-tune with one view still sees augmentation.
    Each teacher sees the view at its own input size (`teacher_sizes`; default: the images' size).
    """
    from medlite.train.augment import resize_to
    teachers = [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    per_view = images.numel()
    views = max(1, min(views, MAX_BANK_BYTES // max(1, per_view)))
    if augment_preset == "none":
        views = 1
    generator = torch.Generator().manual_seed(seed)
    teachers = [t.eval().to(device) for t in teachers]
    bank_images, bank_logits = [], []
    for view in range(views):
        view_images, view_logits = [], []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].float() / 255
            if augment_preset != "none":
                x = augment(x, augment_preset, generator)
            # Round to uint8 first, so the teachers see exactly the pixels the student will see.
            x8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
            view_images.append(x8)
            if teachers:
                inputs = ((x8.float() / 255 - mean) / std).to(device)
                sizes = teacher_sizes or [inputs.shape[-1]] * len(teachers)
                view_logits.append(torch.stack([t(resize_to(inputs, s)).float().cpu() for t, s in zip(teachers, sizes)], 1))
        bank_images.append(torch.cat(view_images))
        if teachers:
            bank_logits.append(torch.cat(view_logits))
    return torch.stack(bank_images), (torch.stack(bank_logits) if teachers else None)
