"""Training: `fit()` (medlite.train.fitting) trains one model with Lightning; `resolve_device` picks the device.

The package itself is light: Lightning takes about 3 s to import, so `fit` and `FitResult` are
loaded on first use (PEP 562), and a run that stops at a bad recipe or bad data never pays for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FitResult", "fit", "resolve_device"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "FitResult"):
        from medlite.train import fitting  # Lightning: only when a model trains

        return getattr(fitting, name)
    if name == "resolve_device":
        from medlite.train.device import resolve_device

        return resolve_device
    raise AttributeError(f"module 'medlite.train' has no attribute {name!r}")
