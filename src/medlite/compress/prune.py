"""Pruning: structured (channels really removed) and unstructured (gradual magnitude masks).

Structured pruning is what makes a model smaller *and faster* on a CPU: it deletes whole
output channels and every tensor that depends on them (the next layer's input channels, BN
statistics, depthwise groups, both sides of a residual add), using Torch-Pruning's dependency
graph, so the result is an ordinary `nn.Module` that exports to ONNX like any other.

Unstructured pruning only zeroes individual weights: the dense file keeps its size and speed,
but it compresses well (see `gzip_bytes`) and sparse runtimes can exploit it. It is applied
gradually during fine-tuning (Zhu & Gupta, 2017; TF-MOT's `PolynomialDecay`), because cutting
50-90% of the weights at once destroys accuracy that a ramp lets the network recover.
"""

from __future__ import annotations

import copy
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

from medlite.errors import UsageError
from medlite.models.weights import load_pruned_state  # noqa: F401 - re-exported: pruned checkpoints reload with it
from medlite.models.complexity import (  # noqa: F401 - re-exported: the measurements pruning is judged by
    PRUNABLE,
    count_macs,
    count_nonzero,
    gzip_bytes,
    prunable_weights,
    sparsity,
)
from medlite.models.complexity import effective_weight as _effective_weight

try:  # Lightning is a hard dependency of medlite, but keep the masks usable without it.
    from lightning.pytorch.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]

Importance = Literal["l1", "l2", "random", "taylor"]
IMPORTANCES = ("l1", "l2", "random", "taylor")


# -- structured pruning ------------------------------------------------------------------------


def _check_ratio(ratio: float, name: str = "ratio") -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise UsageError(f"{name} must be between 0 and 1 (exclusive), got {ratio!r}")


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if kind == "random":
        return tp.importance.RandomImportance()
    if kind == "taylor":
        return tp.importance.TaylorImportance()
    raise UsageError(f"importance must be one of {', '.join(IMPORTANCES)}, got {kind!r}")


def _classifiers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The output layer(s): removing a class's row would change what the model predicts."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def _named(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise UsageError(f"ignore_layers: no module named {missing[0]!r} in the model (see model.named_modules())")
    return [modules[n] for n in names]


def prune_structured(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float = 0.5,
    importance: Importance = "l1",
    ignore_layers: Sequence[str] = (),
    global_pruning: bool = False,
    batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer; return a new, smaller model.

    The input model is left untouched (it is the parent variant). The final classifier (the
    Linear with out_features == number of classes) and the modules named in `ignore_layers`
    keep their outputs. `importance="taylor"` scores channels by |weight x gradient| and so
    needs a labelled `batch` (images, labels) for one backward pass. `global_pruning` ranks
    channels across all layers instead of per layer (uneven widths; at most 90% of any one
    layer is removed so no layer vanishes). Fine-tune afterwards: pruning costs accuracy.
    """
    import torch_pruning as tp

    _check_ratio(ratio)
    why = getattr(model, "why_not_prunable", None)  # a model that knows it cannot be pruned says why (hybrids)
    reason = why() if callable(why) else None
    if reason:
        raise UsageError(f"prune_structured: {reason}")
    if importance == "taylor" and batch is None:
        raise UsageError("importance 'taylor' needs a labelled batch (images, labels) for its gradients")
    scorer = _importance(importance)
    pruned = copy.deepcopy(model).cpu()
    was_training = pruned.training
    pruned.eval()
    example_input = example_input.cpu()
    with torch.no_grad():
        num_classes = int(pruned(example_input).shape[-1])
    ignored = _classifiers(pruned, num_classes) + _named(pruned, list(ignore_layers))
    pruner = tp.pruner.BasePruner(
        pruned,
        example_input,
        importance=scorer,
        pruning_ratio=float(ratio),
        global_pruning=global_pruning,
        max_pruning_ratio=0.9 if global_pruning else 1.0,
        ignored_layers=ignored,
    )
    if importance == "taylor":
        assert batch is not None
        images, labels = batch
        pruned.zero_grad()
        logits = pruned(images.cpu())
        if labels.ndim == 2:  # multi-hot labels (multi-label data): the task's BCE gives the gradients
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.cpu().float())
        else:
            loss = nn.functional.cross_entropy(logits, labels.cpu().reshape(-1).long())
        loss.backward()
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    pruned.train(was_training)
    return pruned


def polynomial_sparsity(
    step: int, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int, power: float = 3.0
) -> float:
    """TF-MOT's PolynomialDecay: fast pruning while the network is redundant, slow near the end.

    s(t) = s_f + (s_i - s_f) * (1 - p)^power, p = (t - begin) / (end - begin) clipped to [0, 1].
    """
    if end_step <= begin_step:
        return final_sparsity if step >= begin_step else initial_sparsity
    progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power


def _kth_magnitude(values: torch.Tensor, fraction: float) -> tuple[torch.Tensor, int]:
    k = int(round(fraction * values.numel()))
    if k <= 0:
        return values.new_tensor(-1.0), 0
    return torch.kthvalue(values, k).values, k


def _masks(
    modules: list[tuple[str, nn.Module]], target: float, scope: str
) -> Iterator[tuple[nn.Module, torch.Tensor]]:
    """Keep-masks that zero the `target` fraction of smallest |w| (globally or in each layer).

    Ties at the threshold are broken by position so the achieved sparsity is exact: a pruned
    weight is exactly zero, so once pruned it stays pruned (it is always among the smallest).
    """
    weights = [_effective_weight(m).abs() for _, m in modules]
    if scope == "global":
        flat = torch.cat([w.flatten() for w in weights])
        order = torch.argsort(flat, stable=True)
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[order[: int(round(target * flat.numel()))]] = False
        offset = 0
        for (_, module), w in zip(modules, weights):
            yield module, keep[offset : offset + w.numel()].view_as(w).to(w.dtype)
            offset += w.numel()
    else:
        for (_, module), w in zip(modules, weights):
            flat = w.flatten()
            keep = torch.ones_like(flat, dtype=torch.bool)
            keep[torch.argsort(flat, stable=True)[: int(round(target * flat.numel()))]] = False
            yield module, keep.view_as(w).to(w.dtype)


def apply_sparsity(model: nn.Module, target: float, scope: str = "global", ignore_layers: Sequence[str] = ()) -> None:
    """Mask the smallest-magnitude conv/linear weights so that `target` of them are zero.

    Uses `torch.nn.utils.prune`: the mask sits in a forward pre-hook, so the pruned weights
    see zero gradient from the loss and stay zero under any optimizer (weight decay included).
    """
    from torch.nn.utils import prune as torch_prune

    modules = prunable_weights(model, ignore_layers)
    if not modules:
        return
    for module, mask in _masks(modules, target, scope):
        if hasattr(module, "weight_mask"):
            module.weight_mask.copy_(mask)
        else:
            torch_prune.custom_from_mask(module, "weight", mask)


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the masks into the weights and remove the prune hooks (before export or saving).

    After this the model is a plain module again (`weight` is a Parameter with exact zeros),
    so its state dict has the parent's keys and it exports to ONNX like the parent.
    """
    from torch.nn.utils import prune as torch_prune

    for module in model.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_orig"):
            torch_prune.remove(module, "weight")
    return model


class GradualMagnitudePruning(_Callback):
    """Lightning callback: ramp weight sparsity from `initial_sparsity` to `final_sparsity`.

    The target follows TF-MOT's cubic PolynomialDecay between `begin_step` and
    `begin_step + total_steps` (optimizer steps), and the masks are recomputed every
    `frequency` steps from the L1 magnitude of the conv/linear weights, globally or per layer.
    Between updates the masks are held by `torch.nn.utils.prune` hooks, so pruned weights stay
    zero. `apply(model, step)` does the work and is what the Lightning hooks call, so the
    schedule is testable (and usable from any loop) without a Trainer.

    `model` is the network to prune (default: `pl_module.model`, else the LightningModule
    itself); pass it explicitly when the LightningModule also holds a teacher.

    `total_steps=None` ramps over `ramp_fraction` of the trainer's estimated optimizer steps,
    leaving the rest of fine-tuning to recover at the final sparsity. At the end of training
    the final sparsity is enforced and, with `permanent=True`, the masks are baked in.
    """

    def __init__(
        self,
        initial_sparsity: float = 0.0,
        final_sparsity: float = 0.5,
        scope: Literal["global", "layer"] = "global",
        total_steps: int | None = None,
        begin_step: int = 0,
        frequency: int | None = None,
        power: float = 3.0,
        ignore_layers: Sequence[str] = (),
        ramp_fraction: float = 0.75,
        permanent: bool = True,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= initial_sparsity < 1.0:
            raise UsageError(f"initial_sparsity must be in [0, 1), got {initial_sparsity!r}")
        _check_ratio(final_sparsity, "final_sparsity")
        if initial_sparsity > final_sparsity:
            raise UsageError("initial_sparsity must not exceed final_sparsity")
        if scope not in ("global", "layer"):
            raise UsageError(f"scope must be 'global' or 'layer', got {scope!r}")
        if total_steps is not None and total_steps < 1:
            raise UsageError(f"total_steps must be at least 1, got {total_steps!r}")
        if frequency is not None and frequency < 1:
            raise UsageError(f"frequency must be at least 1, got {frequency!r}")
        self.initial_sparsity, self.final_sparsity = float(initial_sparsity), float(final_sparsity)
        self.scope, self.power = scope, power
        self.total_steps, self.begin_step = total_steps, int(begin_step)
        self._frequency = frequency
        self.ignore_layers = tuple(ignore_layers)
        self.ramp_fraction, self.permanent = ramp_fraction, permanent
        self.model = model
        self.current: float | None = None  # sparsity of the masks installed last

    def _target_module(self, pl_module: nn.Module) -> nn.Module:
        """The student: never prune a teacher that the LightningModule also holds."""
        if self.model is not None:
            return self.model
        return getattr(pl_module, "model", pl_module)

    @property
    def end_step(self) -> int:
        return self.begin_step + (self.total_steps or 0)

    @property
    def frequency(self) -> int:
        """Default: about 20 mask updates over the ramp (smooth enough, cheap enough)."""
        return self._frequency or max(1, (self.total_steps or 1) // 20)

    def target(self, step: int) -> float:
        """The scheduled sparsity after `step` optimizer steps."""
        return polynomial_sparsity(
            step, self.initial_sparsity, self.final_sparsity, self.begin_step, self.end_step, self.power
        )

    def should_update(self, step: int) -> bool:
        if step < self.begin_step:
            return False
        if step >= self.end_step:
            return self.current != self.final_sparsity
        return (step - self.begin_step) % self.frequency == 0 or self.current is None

    def apply(self, model: nn.Module, step: int) -> float | None:
        """Update the masks if the schedule says so at `step`; return the new sparsity (or None)."""
        if self.total_steps is None:
            raise UsageError("GradualMagnitudePruning: total_steps is unknown (pass it, or run under a Trainer)")
        if not self.should_update(step):
            return None
        target = self.target(step)
        with torch.no_grad():
            apply_sparsity(model, target, self.scope, self.ignore_layers)
        self.current = target
        return target

    # -- Lightning hooks ------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        if self.total_steps is None:
            estimated = int(trainer.estimated_stepping_batches)
            self.total_steps = max(1, int(estimated * self.ramp_fraction))
        self.apply(self._target_module(pl_module), int(trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Runs after the optimizer step, so global_step already counts it.
        sparsity_now = self.apply(self._target_module(pl_module), int(trainer.global_step))
        if sparsity_now is not None:
            pl_module.log("sparsity", sparsity_now, on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module) -> None:
        model = self._target_module(pl_module)
        if self.current != self.final_sparsity:
            with torch.no_grad():
                apply_sparsity(model, self.final_sparsity, self.scope, self.ignore_layers)
            self.current = self.final_sparsity
        if self.permanent:
            make_permanent(model)
