"""Size and cost of a model and of its artifact: parameters, non-zeros, MACs, bytes on disk."""

from __future__ import annotations

import gzip
from pathlib import Path


def count_macs(model, example_input) -> int:
    """Multiply-accumulates of one forward pass (Torch-Pruning's counter, which follows real channels)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, example_input)
    model.train(was_training)
    return int(macs)


def count_nonzero(model) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def gzip_bytes(path: Path) -> int:
    """gzip -9 size of every file the runtime needs: what zeros from unstructured pruning really save."""
    from medlite.export.onnx import artifact_files

    return sum(len(gzip.compress(f.read_bytes(), compresslevel=9)) for f in artifact_files(path))


def describe_model(model, example_input, artifact: Path) -> dict:
    """The size facts every variant reports (see results.json)."""
    from medlite.export.onnx import artifact_bytes
    from medlite.models import count_params

    params = count_params(model)
    nonzero = count_nonzero(model)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "macs": count_macs(model, example_input),
        "file_bytes": artifact_bytes(artifact),
        "gzip_bytes": gzip_bytes(artifact),
    }
