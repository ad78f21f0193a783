"""Evaluate a deployable artifact by running it in its runtime (ONNX Runtime for .onnx files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.data.preprocess import normalize
from medlite.evaluate.metrics import classification_metrics, softmax


def predict_artifact(path: Path, images_uint8: np.ndarray, spec, batch_size: int = 256) -> np.ndarray:
    """Class probabilities from the exported file itself, never from the PyTorch module it came from."""
    from medlite.export.onnx import run_onnx

    logits = run_onnx(path, normalize(images_uint8, spec), batch_size=batch_size)
    return softmax(logits.astype(np.float64))


def evaluate_artifact(path: Path, split, spec, cfg, seed: int) -> tuple[dict, np.ndarray]:
    """(metrics, probabilities) of the artifact on one split; `cfg` is the recipe's EvaluateConfig."""
    probs = predict_artifact(path, split.images, spec, cfg.batch_size)
    metrics = classification_metrics(
        probs, split.labels, list(spec.class_names),
        bootstrap=cfg.bootstrap, confidence=cfg.confidence, ece_bins=cfg.ece_bins, seed=seed,
    )
    return metrics, probs


HEADLINE = ("accuracy", "balanced_accuracy", "auc", "f1_macro", "ece")


def validation_metrics(path: Path, dataset, cfg) -> dict:
    """Headline metrics of the artifact on the validation split (no bootstrap): for choosing settings."""
    split = dataset.splits.get("val")
    if split is None or len(split) == 0:
        return {}
    probs = predict_artifact(path, split.images, dataset.preprocess, cfg.batch_size)
    metrics = classification_metrics(probs, split.labels, list(dataset.class_names), ece_bins=cfg.ece_bins)
    return {k: metrics[k] for k in HEADLINE}
