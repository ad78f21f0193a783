"""What a fit learns from: the teachers, the distillation method, and whether they need a teacher bank."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medlite.distill.methods import DistillMethod, build_method
from medlite.task import task_of


@dataclass
class Teaching:
    teachers: list[torch.nn.Module] = field(default_factory=list)
    method: DistillMethod | None = None  # None: the labels' loss only
    weights: list[float] | None = None  # an ensemble's weights, one per teacher
    bank_views: int = 0  # fixed augmented views to precompute (0: augment live, no bank)
    bank_teachers: list[torch.nn.Module] = field(default_factory=list)  # whose logits the bank holds


def teaching(model: torch.nn.Module, dataset, teacher, distill, *, seed: int, epochs: int, fixed_views: bool,
             teacher_views: int, input_size: int | None = None) -> Teaching:
    """Where the teachers' outputs come from: with `distill.views: bank` (the logit methods' default) a bank
    of fixed augmented views, computed once; with `live` (function matching, and every feature method,
    whose teacher taps need the teacher's forward pass) the teacher runs on the student's very view at
    every step. `fixed_views` gives a run without a teacher a bank's views (a control)."""
    teachers = [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    method = None
    if teachers and distill is not None:
        spec = dataset.preprocess
        size = input_size or spec.image_size  # the student's example input, at its own size
        torch.manual_seed(seed)  # the method's own layers (adapters, exits) start from the seed too
        method = build_method(distill, model, teachers, torch.zeros(2, spec.channels, size, size), task=task_of(dataset))
    weights = getattr(distill, "teacher_weights", None)  # ignored for one teacher
    live_teacher = method is not None and (bool(method.teacher_taps()) or distill.resolved_views == "live")
    bank = (teachers and method is not None and not live_teacher) or (fixed_views and not teachers)
    return Teaching(
        teachers=teachers if method is not None else [],
        method=method,
        weights=weights if weights and len(weights) == len(teachers) else None,
        # Each view serves at least two epochs: otherwise the bank costs as much as a live teacher.
        bank_views=max(1, min(teacher_views, epochs // 2)) if bank else 0,
        bank_teachers=teachers if bank else [],
    )
