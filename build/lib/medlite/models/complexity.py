"""Size and cost of a model and of its artifact: parameters, non-zeros, sparsity, MACs, bytes on disk."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example_input` (use batch size 1).

    MACs, not parameters, are what structured pruning is meant to cut: a depthwise-separable
    student has few parameters but its early, high-resolution layers dominate latency.
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, _ = tp.utils.count_ops_and_params(model, example_input)
    finally:
        model.train(was_training)
    return int(macs)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses (weight_orig * mask while a prune hook is installed)."""
    if hasattr(module, "weight_orig"):
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


def prunable_weights(model: nn.Module, ignore_layers: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv/linear layer whose weight takes part in magnitude pruning."""
    skip = set(ignore_layers)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n not in skip]


def sparsity(model: nn.Module, ignore_layers: Sequence[str] = ()) -> float:
    """Fraction of exactly-zero weights over all conv/linear weights (the pruned population)."""
    modules = prunable_weights(model, ignore_layers)
    total = sum(effective_weight(m).numel() for _, m in modules)
    zeros = sum(int((effective_weight(m) == 0).sum()) for _, m in modules)
    return zeros / total if total else 0.0


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters of the whole model as the forward pass sees them (masks applied)."""
    count = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):
                param = param.detach() * getattr(module, name[: -len("_orig")] + "_mask")
            count += int(torch.count_nonzero(param.detach()))
    return count


def gzip_bytes(path: str | Path) -> int:
    """Size of every file of an artifact (the .onnx and its external data), each gzip -9 compressed.

    A dense file with 50% exact zeros is as large as the parent on disk; its compressed size
    is what unstructured pruning actually saves (download, storage, over-the-air updates).
    """
    from medlite.export.onnx import artifact_files

    return sum(len(gzip.compress(f.read_bytes(), compresslevel=9, mtime=0)) for f in artifact_files(Path(path)))


def describe_model(model: nn.Module, example_input: torch.Tensor, artifact: Path) -> dict:
    """The size facts every variant reports (see results.json)."""
    from medlite.export.onnx import artifact_bytes
    from medlite.models import count_params

    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "sparsity": round(sparsity(model), 6),
        "macs": count_macs(model, example_input),
        "file_bytes": artifact_bytes(artifact),
        "gzip_bytes": gzip_bytes(artifact),
    }
