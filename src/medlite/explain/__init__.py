"""Explanations: a registry of explainers, faithfulness scores and agreement between variants.

Two kinds of explainer plug in here (one small class each, registered by name):
- gradient methods need the PyTorch module (Grad-CAM, Grad-CAM++, Score-CAM, attention rollout);
  they run only on variants trained in PyTorch (the teacher, the students);
- black-box methods (occlusion, LIME) call the deployed file in its runtime (ONNX Runtime), so an
  int8 or pruned variant is explained as shipped, not as the float model it came from.

This module imports nothing heavy (the recipe schema imports `medlite.explain.config`).
"""

from __future__ import annotations

from medlite.explain.config import ExplainConfig
from medlite.explain.registry import EXPLAINERS, register, registered


def get_explainer(name: str, cfg: ExplainConfig | None = None, seed: int = 0):
    """An explainer instance by name (torch is imported when a gradient method runs).

    The registry is `medlite.explain.registry`; this package adds the recipe section's defaults."""
    if name not in registered():
        raise KeyError(f"unknown explainer {name!r}; registered: {', '.join(sorted(EXPLAINERS))}")
    return EXPLAINERS[name](cfg or ExplainConfig(), seed)


__all__ = ["EXPLAINERS", "ExplainConfig", "get_explainer", "register", "registered"]
