"""Knowledge distillation: methods registered by name (`methods.py`), their recipe configs
(`config.py`, light: pydantic only), losses as functions (`losses.py`), the teacher-output bank
(`cache.py`) and the teacher(s) -> [ensemble] -> [assistants] -> student stages (`stages.py`).

Methods (`distill.method` in a recipe): kd (Hinton 2015), dkd (Zhao et al. 2022), dist (Huang et
al. 2022), fitnet (Romero et al. 2015), at (Zagoruyko & Komodakis 2017), multistage (exits + layer
fusion), sp (Tung & Mori 2019); logit methods take `standardize: true` (Sun et al. 2024).

Adding a method touches this package only:
1. `config.py`: a pydantic model with `method: Literal["name"]` (set `uses_teacher_features = True`
   if it reads teacher features), added to `CONFIGS`; the recipe's `distill` union picks it up.
2. `methods.py`: a `DistillMethod` subclass decorated with `@register_method("name")` that declares
   its taps (`student_taps()` / `teacher_taps()`), builds any training-only layers in `setup()`,
   and returns one scalar from `loss(student, teacher, labels, hard_loss=..., epoch=...)`.
"""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `medlite.distill.config` must stay importable without torch (the recipe imports it).
    if name in ("METHODS", "build_method", "register_method", "DistillMethod", "StudentOutput", "TeacherOutput"):
        from medlite.distill import methods

        return getattr(methods, name)
    raise AttributeError(name)
