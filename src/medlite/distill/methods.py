"""Distillation methods, registered by name (as timm registers models and torchdistill losses).

A method is a small `nn.Module` built from its recipe config (`medlite.distill.config`). It
declares what it needs (`student_taps()` / `teacher_taps()`: module paths whose outputs it reads;
logit-only methods need none, so the teacher's outputs can come from a cached bank), may own
trainable parts used only during training (a 1x1 adapter, exits) that are never exported, and
computes one scalar with `loss(student, teacher, labels, hard_loss=..., epoch=...)`.
The LightningModule calls that and nothing else.

    @register_method("kd")
    class KD(DistillMethod): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medlite.distill import losses
from medlite.distill.config import CONFIGS, MethodConfig
from medlite.errors import UsageError
from medlite.models.taps import FeatureTaps, as_map, middle_stage, stage_paths
from medlite.task import SINGLE_LABEL_TASK, Task

METHODS: dict[str, type["DistillMethod"]] = {}


def register_method(name: str):
    """Class decorator: make a method available as `distill.method: <name>` (its config is CONFIGS[name])."""

    def add(cls: type[DistillMethod]) -> type[DistillMethod]:
        if name not in CONFIGS:
            raise KeyError(f"distill method {name!r} has no config model in medlite.distill.config.CONFIGS")
        if name in METHODS:
            raise KeyError(f"distill method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


@dataclass
class StudentOutput:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TeacherOutput:
    """One logit tensor per teacher (an ensemble has several), their weights, and the features tapped
    on the (single) teacher that feature methods use."""

    logits: list[torch.Tensor]
    weights: list[float] | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    task: Task = SINGLE_LABEL_TASK  # multi-label: one sigmoid per label

    def probs(self, temperature: float, standardized: bool = False) -> torch.Tensor:
        """The teachers' softened probabilities, averaged (weighted): the ensemble's soft targets
        (multi-label: per-label sigmoids at T, averaged per label)."""
        weights = self.weights or [1.0] * len(self.logits)
        total = sum(weights)
        if self.task.multilabel:
            if standardized:
                raise UsageError("distill.standardize: logit standardisation is defined for one softmax, not for multi-label data")
            return sum(w / total * losses.soften_binary(z.detach(), temperature) for w, z in zip(weights, self.logits))
        return sum(w / total * losses.soften(z.detach(), temperature, standardized) for w, z in zip(weights, self.logits))

    def soft_kl(self, student_logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
        """The KD term on `probs(...)` targets: softmax KL, or the per-label binary KL for multi-label data."""
        if self.task.multilabel:
            return losses.binary_kl(student_logits, target, temperature)
        return losses.soft_kl(student_logits, target, temperature)


HardLoss = Callable[[torch.Tensor], torch.Tensor]


class DistillMethod(nn.Module):
    """Base class. Subclasses set `name` through `@register_method` and implement `loss`."""

    name: str = ""
    # False: the method's loss is defined for one softmax only (a class per image); multi-label data is refused.
    multilabel: bool = True

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def student_taps(self) -> list[str]:
        return []

    def teacher_taps(self) -> list[str]:
        return []

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor) -> None:
        """Resolve default taps and build trainable parts from the real feature shapes (before training)."""

    def loss(self, student: StudentOutput, teacher: TeacherOutput, labels: torch.Tensor, *,
             hard_loss: HardLoss, epoch: int) -> torch.Tensor:
        raise NotImplementedError


def build_method(cfg: MethodConfig, student: nn.Module, teachers: list[nn.Module], example: torch.Tensor,
                 task: Task = SINGLE_LABEL_TASK) -> DistillMethod:
    """The registered method for `cfg`, set up for this student and these teachers (and the data's task)."""
    cls = METHODS.get(cfg.method)
    if cls is None:
        raise UsageError(f"distill.method: {cfg.method!r} is not registered (known: {', '.join(sorted(METHODS))})")
    if task.multilabel and not cls.multilabel:
        usable = ", ".join(sorted(n for n, c in METHODS.items() if c.multilabel))
        raise UsageError(f"distill.method: {cfg.method} is defined for one softmax (a class per image), not for "
                         f"multi-label data; use one of {usable}")
    method = cls(cfg)
    if type(cfg).uses_teacher_features and len(teachers) != 1:
        raise UsageError(f"distill.method: {cfg.method} distils features from one teacher, not an ensemble of "
                         f"{len(teachers)}; use a logit method (kd, dkd, dist) with teachers:, or chain through an assistant")
    method.setup(student, teachers[0] if teachers else None, example)
    return method


def _shapes(model: nn.Module, paths: list[str], example: torch.Tensor) -> dict[str, torch.Size]:
    """Output shapes at `paths` for one example batch (a dry run in eval mode, without gradients)."""
    taps = FeatureTaps(model, paths)
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
        return {p: as_map(t).shape for p, t in taps.take().items()}
    finally:
        taps.remove()
        model.train(was)


# -- logit methods ----------------------------------------------------------------------


@register_method("kd")
class KD(DistillMethod):
    """Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015):
    alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels)."""

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        c = self.cfg
        # Multi-label: per-label binary KD (Yang et al., ICCV 2023) through the task.
        return teacher.task.kd_loss(student.logits, teacher.probs(c.temperature, c.standardize),
                                    hard_loss(student.logits), c.temperature, c.alpha, c.standardize)


@register_method("dkd")
class DKD(DistillMethod):
    """Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation" (CVPR 2022):
    ce_weight * CE + warmup(epoch) * (alpha * TCKD + beta * NCKD); the KD terms ramp up linearly
    over `warmup_epochs` (the authors use alpha=1, beta=8, 20 warm-up epochs of 240).
    Its target/non-target split needs one class per image: refused for multi-label data."""

    multilabel = False

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        c = self.cfg
        tckd, nckd = losses.dkd_terms(student.logits, teacher.probs(c.temperature, c.standardize), labels,
                                      c.temperature, c.standardize)
        ramp = min((epoch + 1) / c.warmup_epochs, 1.0) if c.warmup_epochs else 1.0
        return c.ce_weight * hard_loss(student.logits) + ramp * (c.alpha * tckd + c.beta * nckd)


@register_method("dist")
class DIST(DistillMethod):
    """Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022):
    ce_weight * CE + beta * inter-class + gamma * intra-class relation loss (1 - Pearson correlation).
    Its relations are those of one softmax per image: refused for multi-label data."""

    multilabel = False

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        c = self.cfg
        inter, intra = losses.dist_terms(student.logits, teacher.probs(c.temperature, c.standardize), c.temperature, c.standardize)
        return c.ce_weight * hard_loss(student.logits) + c.beta * inter + c.gamma * intra


# -- feature methods --------------------------------------------------------------------


@register_method("fitnet")
class FitNet(DistillMethod):
    """Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015): a learned 1x1 convolution
    (the regressor, dropped at export) maps the student's feature at `student_tap` onto the teacher's
    at `teacher_tap`; loss = CE + hint_weight * MSE (+ kd_weight * Hinton KD). One stage, as is
    common today, rather than the paper's separate hint pre-training stage."""

    def setup(self, student, teacher, example):
        c = self.cfg
        self.s_tap = c.student_tap or middle_stage(student)
        self.t_tap = c.teacher_tap or middle_stage(teacher)
        s_shape = _shapes(student, [self.s_tap], example)[self.s_tap]
        t_shape = _shapes(teacher, [self.t_tap], example)[self.t_tap]
        self.target_size = tuple(t_shape[-2:])
        self.adapter = nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False), nn.BatchNorm2d(t_shape[1]))

    def student_taps(self):
        return [self.s_tap]

    def teacher_taps(self):
        return [self.t_tap]

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        c = self.cfg
        s = self.adapter(as_map(student.features[self.s_tap]))
        if tuple(s.shape[-2:]) != self.target_size:
            s = F.adaptive_avg_pool2d(s, self.target_size)
        hint = F.mse_loss(s, as_map(teacher.features[self.t_tap]).detach())
        total = hard_loss(student.logits) + c.hint_weight * hint
        if c.kd_weight:
            total = total + c.kd_weight * teacher.soft_kl(student.logits, teacher.probs(c.temperature), c.temperature)
        return total


@register_method("at")
class AT(DistillMethod):
    """Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017): CE + beta/2 * sum over
    paired stages of the squared distance between L2-normalised attention maps (mean_c |A|^p)."""

    def setup(self, student, teacher, example):
        c = self.cfg
        self.s_taps = c.student_taps or stage_paths(student)
        self.t_taps = c.teacher_taps or stage_paths(teacher)
        if len(self.s_taps) != len(self.t_taps):
            if c.student_taps or c.teacher_taps:
                raise UsageError(f"distill.student_taps / teacher_taps: {len(self.s_taps)} student and "
                                 f"{len(self.t_taps)} teacher taps; pair them one to one")
            # Default: pair the deepest stages (the teacher's last k with the student's last k).
            k = min(len(self.s_taps), len(self.t_taps))
            self.s_taps, self.t_taps = self.s_taps[-k:], self.t_taps[-k:]

    def student_taps(self):
        return list(self.s_taps)

    def teacher_taps(self):
        return list(self.t_taps)

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        c = self.cfg
        terms = [losses.at_loss(as_map(student.features[s]), as_map(teacher.features[t]), c.p)
                 for s, t in zip(self.s_taps, self.t_taps)]
        return hard_loss(student.logits) + c.beta / 2 * sum(terms)


@register_method("multistage")
class MultiStage(DistillMethod):
    """Multi-stage distillation with exits and layer fusion (in the spirit of deeply-supervised KD,
    e.g. Zhang et al., "Be Your Own Teacher", ICCV 2019, with an external teacher): an exit (global
    pool + linear, training only) on each chosen student stage is distilled from the teacher's
    logits; the final classifier sees the fused stage features (`fused(arch)`, exported).
    loss = intermediate_weight * mean(exit KD) + logits_weight * KD(final) + labels_weight * CE(final)."""

    def setup(self, student, teacher, example):
        c = self.cfg
        self.taps = c.exits or stage_paths(student)[:-1]
        if not self.taps:
            raise UsageError("distill.exits: the student has a single stage; name the modules to put exits on")
        shapes = _shapes(student, self.taps + [""], example)
        classes = shapes[""][1]  # the student's own output: its number of classes
        self.exits = nn.ModuleList([nn.Linear(shapes[p][1], classes) for p in self.taps])

    def student_taps(self):
        return list(self.taps)

    def exit_logits(self, student: StudentOutput) -> list[torch.Tensor]:
        return [head(as_map(student.features[p]).mean(dim=(2, 3))) for p, head in zip(self.taps, self.exits)]

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        c = self.cfg
        target = teacher.probs(c.temperature)
        exit_terms = []
        for logits in self.exit_logits(student):
            term = teacher.soft_kl(logits, target, c.temperature)
            if c.exit_labels:
                term = 0.5 * term + 0.5 * hard_loss(logits)
            exit_terms.append(term)
        intermediate = torch.stack(exit_terms).mean()
        final = teacher.soft_kl(student.logits, target, c.temperature)
        return c.intermediate_weight * intermediate + c.logits_weight * final + c.labels_weight * hard_loss(student.logits)


@register_method("sp")
class SP(DistillMethod):
    """Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019): for each paired tap,
    G = row-normalised Q Q^T of the flattened activations Q (batch x features); loss =
    CE + gamma / b^2 * sum ||G_teacher - G_student||_F^2. Shapes never need to match (G is b x b),
    so no adapter is learned."""

    def setup(self, student, teacher, example):
        c = self.cfg
        self.s_taps = c.student_taps or stage_paths(student)[-1:]
        self.t_taps = c.teacher_taps or stage_paths(teacher)[-1:]
        if len(self.s_taps) != len(self.t_taps):
            raise UsageError(f"distill.student_taps / teacher_taps: {len(self.s_taps)} student and "
                             f"{len(self.t_taps)} teacher taps; pair them one to one")

    def student_taps(self):
        return list(self.s_taps)

    def teacher_taps(self):
        return list(self.t_taps)

    def loss(self, student, teacher, labels, *, hard_loss, epoch):
        def similarity(feature: torch.Tensor) -> torch.Tensor:
            q = feature.flatten(1)
            return F.normalize(q @ q.t(), dim=1)

        terms = []
        for s, t in zip(self.s_taps, self.t_taps):
            g_s, g_t = similarity(student.features[s]), similarity(teacher.features[t].detach())
            terms.append((g_t - g_s).pow(2).sum() / g_s.shape[0] ** 2)
        return hard_loss(student.logits) + self.cfg.gamma * sum(terms)
