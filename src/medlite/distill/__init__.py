"""Knowledge distillation: methods registered by name (`methods.py`), their recipe configs
(`config.py`, light), losses as functions (`losses.py`) and the teacher-output bank (`cache.py`).

    from medlite.distill import METHODS, build_method, register_method
"""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `medlite.distill.config` must stay importable without torch (the recipe imports it).
    if name in ("METHODS", "build_method", "register_method", "DistillMethod", "StudentOutput", "TeacherOutput"):
        from medlite.distill import methods

        return getattr(methods, name)
    raise AttributeError(name)
