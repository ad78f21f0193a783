"""Distillation losses as plain functions of tensors (the method classes in `methods.py` combine them).

Teacher targets arrive as *probabilities* (`teacher_probs`), not logits: a teachers' ensemble is a
mean of softened probabilities, which no single logit vector at the same temperature reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024):
    z-score each logit vector, so the student matches the teacher's logit *relations*, not their scale.

    With two classes every standardised vector is +-1/sqrt(2): only the ranking survives.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def soften(logits: torch.Tensor, temperature: float, standardized: bool = False) -> torch.Tensor:
    """softmax(z / T), of the standardised logits when `standardized`."""
    z = standardize(logits) if standardized else logits
    return torch.softmax(z / temperature, dim=-1)


def soft_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, standardized: bool = False) -> torch.Tensor:
    """T^2 * KL(teacher || softmax(student / T)), averaged over the batch (Hinton et al. 2015).

    The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones as T grows.
    """
    z = standardize(student_logits) if standardized else student_logits
    log_p = F.log_softmax(z / temperature, dim=-1)
    kl = F.kl_div(log_p, teacher_probs.detach(), reduction="batchmean")
    return kl * temperature * temperature


def kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    hard: torch.Tensor,
    temperature: float,
    alpha: float,
    standardized: bool = False,
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(teacher || softmax(student / T)) + (1 - alpha) * hard.

    The one KD formula: the `kd` method (methods.KD) computes its loss here. `teacher_probs` are the
    softened teacher targets (`soften(teacher_logits, T)`, or an ensemble's mean of them); `hard` is
    the hard-label loss already computed on `student_logits` (the trainer's, with its class weights
    and label smoothing, e.g. `F.cross_entropy(student_logits, labels)`).
    """
    soft = soft_kl(student_logits, teacher_probs, temperature, standardized)
    return alpha * soft + (1 - alpha) * hard


def dkd_terms(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, temperature: float,
    standardized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022), each x T^2.

    TCKD = KL(b^T || b^S) on the binary (target, rest) probabilities; NCKD = KL(p^T || p^S) among
    the non-target classes only (renormalised). Classical KD = TCKD + (1 - p_t^T) * NCKD.
    With two classes there is one non-target class, so NCKD is 0 and DKD is alpha x KD.
    """
    t = temperature
    z = standardize(student_logits) if standardized else student_logits
    p_s = torch.softmax(z / t, dim=-1)
    p_t = teacher_probs.detach()
    target = F.one_hot(labels, p_s.shape[-1]).bool()
    eps = 1e-12
    # Binary target / non-target distributions.
    # Each mass summed directly (not 1 - p): exact when the target probability is close to 1.
    bt_s, bn_s = (p_s * target).sum(-1), (p_s * ~target).sum(-1)
    bt_t, bn_t = (p_t * target).sum(-1), (p_t * ~target).sum(-1)
    b_s = torch.stack([bt_s, bn_s], -1).clamp_min(eps)
    b_t = torch.stack([bt_t, bn_t], -1)
    tckd = (torch.xlogy(b_t, b_t) - b_t * b_s.log()).sum(-1).mean()
    # Non-target classes: the student's from a masked log-softmax (exact, no division), the teacher's renormalised.
    log_nt_s = F.log_softmax(z / t - 1000.0 * target, dim=-1)
    nt_t = (p_t * ~target) / bn_t.clamp_min(eps)[:, None]
    nckd = ((torch.xlogy(nt_t, nt_t) - nt_t * log_nt_s) * ~target).sum(-1).mean()
    return tckd * t * t, nckd * t * t


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float,
               standardized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) relation losses of DIST (Huang et al., "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022), each x T^2: 1 - Pearson correlation of the softened predictions,
    per image across classes (inter-class) and per class across the batch (intra-class)."""
    p_s = soften(student_logits, temperature, standardized)
    p_t = teacher_probs.detach()
    inter = 1 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1 - _pearson(p_s, p_t, dim=0).mean()
    t2 = temperature * temperature
    return inter * t2, intra * t2


def attention_map(feature: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Spatial attention of Zagoruyko & Komodakis (ICLR 2017): mean over channels of |A|^p,
    resized to `size` when given, flattened and L2-normalised (N x HW)."""
    a = feature.abs().pow(p).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared difference of the normalised attention maps (the authors' code; beta/2 is applied outside)."""
    size = tuple(teacher_feature.shape[-2:])
    a_s = attention_map(student_feature, p, size)
    a_t = attention_map(teacher_feature.detach(), p)
    return (a_s - a_t).pow(2).mean()


# -- multi-label (several independent findings per image: one sigmoid per label) ----------------------


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over images and labels; `pos_weight` (K,) scales
    each label's positive term (`medlite.task.pos_weight`: negatives / positives balances a label)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma_neg: float = 4.0, gamma_pos: float = 1.0,
                    clip: float = 0.05, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The asymmetric loss (Ridnik et al., ICCV 2021) as timm implements it (`AsymmetricLossMultiLabel`),
    with the paper's defaults. Reduction 'mean' (over images and labels), so its scale is BCE's: the
    paper's 'sum' grows with the batch size, and timm's default 'batchmean' with the label count."""
    from timm.loss import AsymmetricLossMultiLabel

    loss = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="mean",
                                    pos_weight=pos_weight)
    return loss.to(logits.device)(logits, targets)


def soften_binary(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigmoid(z / T) per label: a multi-label teacher's soft targets (an ensemble averages these)."""
    return torch.sigmoid(logits / temperature)


def binary_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-label binary KD (Yang et al., "Multi-Label Knowledge Distillation", ICCV 2023): for every
    label the KL divergence between the teacher's and the student's Bernoulli distributions
    (p, 1 - p) at temperature T, times T^2, averaged over images and labels (the scale of BCE
    averaged the same way, so `alpha` mixes like single-label KD's).

    `teacher_probs` are `soften_binary(teacher_logits, T)` (or an ensemble's mean of them). The
    student's log-probabilities come from logsigmoid (log(1 - sigmoid(z)) = logsigmoid(-z)): exact
    where the sigmoid saturates.
    """
    z = student_logits.float() / temperature
    p_t = teacher_probs.detach().float()
    q_t = 1 - p_t
    kl = torch.xlogy(p_t, p_t) + torch.xlogy(q_t, q_t) - p_t * F.logsigmoid(z) - q_t * F.logsigmoid(-z)
    return kl.mean() * temperature * temperature


def multilabel_kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, hard: torch.Tensor,
                       temperature: float, alpha: float) -> torch.Tensor:
    """alpha * binary_kl + (1 - alpha) * hard: `kd_loss` for multi-label data. `hard` is the trainer's
    hard-label loss on `student_logits` (BCE or the asymmetric loss, `Task.hard_loss`)."""
    return alpha * binary_kl(student_logits, teacher_probs, temperature) + (1 - alpha) * hard
