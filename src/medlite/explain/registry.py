"""The explainer registry: every explainer class registers here by name (`@register`).

Light (standard library only). The built-in explainers live in `medlite.explain.methods`, imported
the first time the registry is read (by name, like the data and model registries discover their
modules), so validating a recipe never hand-keeps a list of names.
"""

from __future__ import annotations

from importlib import import_module

EXPLAINERS: dict[str, type] = {}
BUILTIN_MODULES = ("medlite.explain.methods",)  # numpy only at import; torch when a gradient method runs


def register(cls: type) -> type:
    """Class decorator: make an explainer available by its `name`."""
    if cls.name in EXPLAINERS:
        raise ValueError(f"explainer {cls.name!r} registered twice")
    EXPLAINERS[cls.name] = cls
    return cls


def registered() -> list[str]:
    """The names of every registered explainer (the built-in ones register when their module loads)."""
    for module in BUILTIN_MODULES:
        import_module(module)
    return list(EXPLAINERS)
