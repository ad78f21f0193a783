"""The distillation part of the stage graph: teacher(s) -> [ensemble] -> [assistants] -> student.

    teacher: (one)        teacher ─────────────────────────────▶ student_kd
    teachers: [a, b, c]   teacher_0..2 ─▶ teacher_ensemble ─▶ assistant_1 ─▶ ... ─▶ student_kd
                                           (evaluated too)

Every model here is a variant with its lineage as data (`parent`, `teachers`). The training
stage itself (`train`, the pipeline's `stage_train`) is passed in, so this module and the
pipeline never import each other.
"""

from __future__ import annotations

from typing import Callable

from medlite.errors import UsageError

SINGLE_TEACHER, ENSEMBLE, STUDENT = "teacher", "teacher_ensemble", "student_kd"


def teacher_names(recipe) -> list[str]:
    return [SINGLE_TEACHER] if recipe.teachers is None else [f"teacher_{i}" for i in range(len(recipe.teachers))]


def variant_names(recipe) -> list[str]:
    """The variants this part of the pipeline makes, in order (for checks such as compress.targets)."""
    names = teacher_names(recipe) + ([ENSEMBLE] if recipe.teachers is not None else [])
    names += [f"assistant_{i + 1}" for i in range(len(recipe.assistants))]
    if recipe.distill.scratch_baseline:
        names.append("student_scratch")
    return names + [STUDENT]


def check_recipe(recipe) -> None:
    """Fail before any training on a distillation setup that cannot work."""
    from medlite.models import check_arch

    sections = [("teacher", recipe.teacher)] if recipe.teachers is None else [
        (f"teachers[{i}]", t) for i, t in enumerate(recipe.teachers)]
    sections += [(f"assistants[{i}]", a) for i, a in enumerate(recipe.assistants)] + [("student", recipe.student)]
    for where, cfg in sections:
        try:
            check_arch(cfg.arch)
        except UsageError as err:
            raise UsageError(f"{where}.arch: {err}") from None
    d = recipe.distill
    n = 1 if recipe.teachers is None else len(recipe.teachers)
    if d.teacher_weights is not None and len(d.teacher_weights) != n:
        raise UsageError(f"distill.teacher_weights: {len(d.teacher_weights)} weights for {n} teacher(s)")
    if type(d).uses_teacher_features and n > 1 and not recipe.assistants:
        raise UsageError(f"distill.method: {d.method} distils features from one teacher, not an ensemble of {n}; "
                         "use a logit method (kd, dkd, dist) or add an assistant")


def stage_ensemble(ctx, members: list, weights: list[float] | None):
    """The teachers' ensemble as one model (mean of their probabilities), saved as one checkpoint."""
    from medlite.models.composite import Ensemble
    from medlite.models.weights import save_state
    from medlite.variant import Variant, stage_key

    arch = "ensemble(" + ",".join(m.arch for m in members) + ")"
    key = stage_key("ensemble", [ctx.artifact_hash(m) for m in members], weights)
    ckpt = ctx.run.checkpoints / f"{ENSEMBLE}.safetensors"
    facts = ctx.reuse(ENSEMBLE, key, announce=ctx.run.rel(ckpt))
    if facts is not None:
        return ctx.add(Variant.from_dict(facts))
    model = Ensemble([ctx.load_variant_model(m) for m in members], weights)
    save_state(model, ckpt, metadata={"arch": arch, "variant": ENSEMBLE})
    variant = Variant(name=ENSEMBLE, parent=None, stage="ensemble", arch=arch, teachers=[m.name for m in members],
                      checkpoint=ctx.run.rel(ckpt), params=sum(p.numel() for p in model.parameters()),
                      train={"weights": [float(w) for w in model.weights]})
    ctx.say(f"{ENSEMBLE}: mean of the probabilities of {', '.join(m.name for m in members)}")
    ctx.store(ENSEMBLE, key, [ckpt], variant.to_dict())
    return ctx.add(variant)


def run_distillation(ctx, train: Callable) -> None:
    """Train the teacher(s), their ensemble, the assistants, the scratch baseline and the distilled student.

    `train(ctx, name, cfg, *, teachers=[variants], parent=variant, stage=..., fixed_views=..., section=...)` trains one model.
    """
    recipe = ctx.recipe
    d = recipe.distill
    check_recipe(recipe)
    # `section`: the recipe section each model was trained with, recorded on its variant (lineage as data).
    if recipe.teachers is None:
        teachers = [train(ctx, SINGLE_TEACHER, recipe.teacher, section="teacher")]
        parent = teachers[0]
    else:
        teachers = [train(ctx, name, cfg, section=f"teachers.{i}")
                    for i, (name, cfg) in enumerate(zip(teacher_names(recipe), recipe.teachers))]
        parent = stage_ensemble(ctx, teachers, d.teacher_weights)
    for i, cfg in enumerate(recipe.assistants):
        cfg = cfg.model_copy(update={"arch": d.student_arch(cfg.arch)})
        teachers = [train(ctx, f"assistant_{i + 1}", cfg, teachers=teachers, parent=parent, stage="distill",
                          section=f"assistants.{i}")]
        parent = teachers[0]
    if d.scratch_baseline:
        # Logit methods distil on a bank of fixed views: the baseline trains on the very same views.
        train(ctx, "student_scratch", recipe.student, fixed_views=not type(d).uses_teacher_features, section="student")
    student = recipe.student.model_copy(update={"arch": d.student_arch(recipe.student.arch)})
    train(ctx, STUDENT, student, teachers=teachers, parent=parent, stage="distill", section="student")
