"""Evaluate a deployable artifact by running it in its runtime (through `medlite.runtime`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.evaluate.metrics import classification_metrics


def predict_artifact(path: Path, images_uint8: np.ndarray, spec=None, batch_size: int = 256,
                     runtime: str | None = None) -> np.ndarray:
    """Class probabilities from the exported file itself, never from the PyTorch module it came from.

    `runtime` is the variant's runtime (`onnxruntime`, `litert`); None picks it from the registry.
    `spec` (the dataset's preprocessing) wins over the file's own when given: evaluation prepares
    the split exactly as training did.
    """
    from medlite.runtime import open_artifact, softmax
    from medlite.data.preprocess import normalize

    art = open_artifact(path, runtime=runtime)
    spec = spec or art.require_spec()
    return softmax(art.run(normalize(images_uint8, spec), batch_size).astype(np.float64))


def evaluate_artifact(path: Path, split, spec, cfg, seed: int, runtime: str | None = None) -> tuple[dict, np.ndarray]:
    """(metrics, probabilities) of the artifact on one split; `cfg` is the recipe's EvaluateConfig."""
    probs = predict_artifact(path, split.images, spec, cfg.batch_size, runtime=runtime)
    metrics = classification_metrics(
        probs, split.labels, list(spec.class_names),
        bootstrap=cfg.bootstrap, confidence=cfg.confidence, ece_bins=cfg.ece_bins, seed=seed,
    )
    return metrics, probs


HEADLINE = ("accuracy", "balanced_accuracy", "auc", "f1_macro", "ece")


def validation_metrics(path: Path, dataset, cfg, runtime: str | None = None) -> dict:
    """Headline metrics of the artifact on the validation split (no bootstrap): for choosing settings."""
    split = dataset.splits.get("val")
    if split is None or len(split) == 0:
        return {}
    probs = predict_artifact(path, split.images, dataset.preprocess, cfg.batch_size, runtime)
    metrics = classification_metrics(probs, split.labels, list(dataset.class_names), ece_bins=cfg.ece_bins)
    return {k: metrics[k] for k in HEADLINE}
