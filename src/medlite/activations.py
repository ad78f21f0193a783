"""Logits to probabilities, numpy only (devices have neither torch nor scipy): the project's one softmax
and one sigmoid, for the runtimes, the evaluation and the task objects alike. A leaf module: it imports
nothing of medlite, so anything may import it.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: subtract the max). The project's one softmax."""
    z = np.asarray(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic in float64, numpy only (devices have no scipy): exp(-|z|) never
    overflows, and small probabilities keep their precision (not 1 - a number near 1). The project's
    one sigmoid."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))
