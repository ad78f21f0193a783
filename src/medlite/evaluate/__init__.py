"""Evaluate a deployable artifact by running it in its runtime (through `medlite.runtime`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def predict_artifact(path: Path, images_uint8: np.ndarray, spec=None, batch_size: int = 256,
                     runtime: str | None = None) -> np.ndarray:
    """Class probabilities from the exported file itself, never from the PyTorch module it came from.

    `runtime` is the variant's runtime (`onnxruntime`, `litert`); None picks it from the registry.
    `spec` (the dataset's preprocessing) wins over the file's own when given: evaluation prepares
    the split exactly as training did.
    """
    from medlite.runtime import activate, open_artifact
    from medlite.data.preprocess import normalize

    art = open_artifact(path, runtime=runtime)
    spec = spec or art.require_spec()
    return activate(art.run(normalize(images_uint8, spec), batch_size).astype(np.float64), spec)


HEADLINE = ("accuracy", "balanced_accuracy", "auc", "f1_macro", "ece")


