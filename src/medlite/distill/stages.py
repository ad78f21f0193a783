"""The distillation part of the stage graph: teacher(s) -> [ensemble] -> [assistants] -> students.

    teacher: (one)        teacher ─────────────────────────────▶ student_kd
    teachers: [a, b, c]   teacher_0..2 ─▶ teacher_ensemble ─▶ assistant_1 ─▶ ... ─▶ student_kd
                                           (evaluated too)

Every model here is a variant with its lineage as data (`parent`, `teachers`, `train_section`),
made by a `medlite.stage.Stage` (`train_stage`, `ensemble_stage`): keyed, reused, timed and
stored by `StageLedger.run_stage` like every other stage.
"""

from __future__ import annotations

from pathlib import Path

from medlite.context import Context
from medlite.errors import UsageError
from medlite.models import count_params
from medlite.models.weights import save_state
from medlite.runstate import sha256
from medlite.stage import Stage
from medlite.train import launched
from medlite.variant import TrainSection, Variant

SINGLE_TEACHER, ENSEMBLE, STUDENT = "teacher", "teacher_ensemble", "student_kd"
SCRATCH, SCRATCH_BANK = "student_scratch", "student_scratch_bank"


def teacher_names(recipe) -> list[str]:
    return [SINGLE_TEACHER] if recipe.teachers is None else [f"teacher_{i}" for i in range(len(recipe.teachers))]


def variant_names(recipe) -> list[str]:
    """The variants this part of the pipeline makes, in order (for checks such as compress.targets)."""
    names = teacher_names(recipe) + ([ENSEMBLE] if recipe.teachers is not None else [])
    names += [f"assistant_{i + 1}" for i in range(len(recipe.assistants))]
    if recipe.distill.scratch_baseline:
        names.append(SCRATCH)
    if _bank_control(recipe):
        names.append(SCRATCH_BANK)
    return names + [STUDENT] + [compare_name(i) for i in range(len(recipe.compare_students))]


def compare_name(i: int) -> str:
    """The variant of `compare_students[i]`: another student distilled like `student_kd`."""
    return f"compare_{i + 1}_kd"


def _students(recipe) -> list[tuple[str, object]]:
    """The distilled students' sections by key: `student`, then `compare_students[i]`."""
    return [("student", recipe.student)] + [(f"compare_students[{i}]", c) for i, c in enumerate(recipe.compare_students)]


def _bank_control(recipe) -> bool:
    """The fixed-view scratch control exists where the distilled student learns from a bank of views."""
    d = recipe.distill
    return d.scratch_bank_control and d.resolved_views == "bank"


def check_recipe(recipe) -> None:
    """Fail before any training on a distillation setup that cannot work."""
    from medlite.models import check_arch

    sections = [("teacher", recipe.teacher)] if recipe.teachers is None else [
        (f"teachers[{i}]", t) for i, t in enumerate(recipe.teachers)]
    sections += [(f"assistants[{i}]", a) for i, a in enumerate(recipe.assistants)] + [("student", recipe.student)]
    sections += [(f"compare_students[{i}]", c) for i, c in enumerate(recipe.compare_students)]
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
    for where, cfg in _students(recipe):
        if cfg.image_size is not None and type(d).uses_teacher_features:
            raise UsageError(f"{where}.image_size: {d.method} matches the teacher's feature maps, which a student at "
                             "another resolution does not have; use a logit method (kd, dkd, dist, multistage)")


def check_data(recipe, dataset) -> None:
    """Checks that need the data: a cross-resolution student is smaller than the data, never larger;
    multi-label data (several findings per image) and the settings that need one class per image."""
    for where, cfg in _students(recipe):
        size = cfg.image_size
        if size is not None and size > dataset.image_size:
            raise UsageError(f"{where}.image_size: {size} px is larger than the data's {dataset.image_size} px; "
                             "a student is trained at the data's size or lower")
    _check_task(recipe, dataset)


def _check_task(recipe, dataset) -> None:
    """Before any training: the settings the data's task cannot take (the loss key, a balanced sampler, a
    softmax-only distillation method), refused in one line each, rather than after the teacher's training."""
    from medlite.distill.methods import METHODS
    from medlite.task import task_of
    from medlite.train.fitting import hard_loss_kind

    task = task_of(dataset)
    sections = [("teacher", recipe.teacher)] if recipe.teachers is None else [
        (f"teachers[{i}]", t) for i, t in enumerate(recipe.teachers)]
    sections += [(f"assistants[{i}]", a) for i, a in enumerate(recipe.assistants)] + [("student", recipe.student)]
    sections += [(f"compare_students[{i}]", c) for i, c in enumerate(recipe.compare_students)]
    for where, cfg in sections:
        try:
            hard_loss_kind(task, cfg.loss)
        except UsageError as err:
            raise UsageError(f"{where}.{err}") from None
        if task.multilabel and cfg.label_smoothing:
            raise UsageError(f"{where}.label_smoothing: defined for cross-entropy over one softmax, not for "
                             "multi-label data; set it to 0")
    task.check_balance(recipe.data.balance)
    if not task.multilabel:
        return
    d = recipe.distill
    method = METHODS.get(d.method)
    if method is not None and not method.multilabel:
        usable = ", ".join(sorted(n for n, c in METHODS.items() if c.multilabel))
        raise UsageError(f"distill.method: {d.method} is defined for one softmax (a class per image), not for "
                         f"multi-label data; use one of {usable}")
    if getattr(d, "standardize", False):
        raise UsageError("distill.standardize: logit standardisation is defined for one softmax, not for multi-label data")


def _pretrained_identity(cfg):
    """A weights file keys by its content; `imagenet` or None by name."""
    if cfg.pretrained and Path(cfg.pretrained).is_file():
        return sha256(Path(cfg.pretrained))
    return cfg.pretrained


def train_stage(ctx: Context, name: str, section: TrainSection, *, cfg=None, teachers: list[Variant] = (),
                parent: Variant | None = None, stage: str = "train", fixed_views: bool = False,
                mixup: float = 0.0) -> Stage[Variant]:
    """Train one model with the recipe section `section` (or `cfg`, a modified copy of it), or distil
    it from `teachers` with the recipe's distill method (its views and mixup); `parent` is the variant
    it descends from (default: the first teacher). `mixup` is for training without a teacher (the
    scratch baseline gets the distilled student's). A section with `image_size` (the student's)
    trains at that input size. The checkpoint is the best-validation-AUC epoch."""
    recipe = ctx.recipe
    cfg = cfg if cfg is not None else section.resolve(recipe)
    teachers = list(teachers)
    parent = parent or (teachers[0] if teachers else None)
    distill = recipe.distill if teachers else None
    mixup = distill.mixup if distill else mixup
    input_size = getattr(cfg, "image_size", None) or ctx.dataset.image_size
    ckpt = ctx.run.checkpoints / f"{name}.safetensors"
    config = [cfg.model_dump(), recipe.data.model_dump(include={"augment", "balance"}), ctx.dataset.fingerprint(),
              recipe.seed, recipe.device, _pretrained_identity(cfg), distill.model_dump() if distill else None,
              fixed_views, mixup]
    if recipe.trainer != type(recipe.trainer)():  # devices/strategy/precision change the numbers
        config.append(recipe.trainer.model_dump())
    if launched.current() is not None:  # so does the world a launcher started (torchrun, srun)
        config.append(launched.current().describe())

    # How it was trained, recorded for every comparison: what the student saw (`live` augmentation, or a
    # `bank` of fixed views: a logit method's default, the scratch control's), mixup, its input size.
    views = "bank" if fixed_views or (distill and distill.resolved_views == "bank") else "live"
    training = {"views": views, "mixup": float(mixup), "image_size": input_size, "epochs": cfg.epochs,
                "optimizer": cfg.optimizer, "teachers": [t.name for t in teachers],
                "method": distill.method if distill else None}

    def lineage(**facts) -> Variant:
        return Variant(name=name, parent=parent.name if parent else None, stage=stage, arch=cfg.arch,
                       teachers=[t.name for t in teachers], train_section=section, training=training, **facts)

    def compute() -> dict:
        from medlite.train import fit  # Lightning (about 3 s to import): only when a model is trained

        if cfg.pretrained and cfg.pretrained != "imagenet" and not Path(cfg.pretrained).is_file():
            raise UsageError(f"{name}.pretrained: weights file {cfg.pretrained!r} not found")
        model = ctx.models.build(cfg.arch, cfg.pretrained, image_size=input_size)
        if recipe.trainer.checkpoints(section.field):  # checked for every section at the start of the run
            from medlite.train.checkpointing import enable

            enable(model, cfg.arch, f"{section}.arch")
        teacher_models = [ctx.models.load(t) for t in teachers]
        what = f"distilling {cfg.arch} from {parent.name} ({distill.method}, {views} views)" if teachers else f"training {cfg.arch}"
        extras = (f", mixup {mixup:g}" if mixup else "") + (f", at {input_size} px" if input_size != ctx.dataset.image_size else "")
        ctx.say(f"{name}: {what} ({count_params(model):,} parameters, {cfg.epochs} epochs{extras})")
        result = fit(
            model, ctx.dataset, cfg, data_cfg=recipe.data, seed=recipe.seed,
            log_dir=ctx.run.stage_logs(name), label=name, teacher=teacher_models or None, distill=distill,
            fixed_views=fixed_views, device=ctx.device, say=ctx.say, progress=ctx.progress,
            trainer_cfg=recipe.trainer, input_size=input_size, mixup=mixup,
            teacher_sizes=[ctx.input_size(t) for t in teachers] or None,
        )
        save_state(model, ckpt, metadata={"arch": cfg.arch, "variant": name})
        variant = lineage(checkpoint=ctx.run.rel(ckpt), params=count_params(model), train=result.to_dict())
        for warning in result.warnings:
            ctx.warn(variant, warning)
        if result.best_epoch >= 0:
            score = f"val AUC {result.best_val_auc:.3f}" if result.best_val_auc is not None else f"by {result.selected_by}"
            ctx.say(f"{name}: best epoch {result.best_epoch + 1} ({score}), {result.seconds:.0f}s")
        return variant.to_record()

    return Stage(name=name, kind="train", inputs=teachers, config=config, outputs=[ckpt], compute=compute,
                 emit=lambda facts: ctx.add(Variant.from_dict(facts)), plan=lambda: ctx.add(lineage(checkpoint=ctx.run.rel(ckpt), planned=True)),
                 bucket=name, announce=ctx.run.rel(ckpt))


def ensemble_stage(ctx: Context, members: list[Variant], weights: list[float] | None) -> Stage[Variant]:
    """The teachers' ensemble as one model (mean of their probabilities), saved as one checkpoint."""
    from medlite.models.composite import ensemble_arch

    arch = ensemble_arch([m.arch for m in members])
    ckpt = ctx.run.checkpoints / f"{ENSEMBLE}.safetensors"

    def lineage(**facts) -> Variant:
        return Variant(name=ENSEMBLE, parent=None, stage="ensemble", arch=arch, teachers=[m.name for m in members],
                       **facts)

    def compute() -> dict:
        from medlite.models.composite import Ensemble
        from medlite.models.weights import save_state

        model = Ensemble([ctx.models.load(m) for m in members], weights)
        model.multilabel = ctx.dataset.multilabel  # per-label sigmoids averaged (not kept in the checkpoint)
        save_state(model, ckpt, metadata={"arch": arch, "variant": ENSEMBLE})
        ctx.say(f"{ENSEMBLE}: mean of the probabilities of {', '.join(m.name for m in members)}")
        return lineage(checkpoint=ctx.run.rel(ckpt), params=sum(p.numel() for p in model.parameters()),
                       train={"weights": [float(w) for w in model.weights]}).to_record()

    return Stage(name=ENSEMBLE, kind="ensemble", inputs=members, config=weights, outputs=[ckpt], compute=compute,
                 emit=lambda facts: ctx.add(Variant.from_dict(facts)), plan=lambda: ctx.add(lineage(checkpoint=ctx.run.rel(ckpt), planned=True)),
                 announce=ctx.run.rel(ckpt))


def run_distillation(ctx: Context) -> None:
    """Train the teacher(s), their ensemble, the assistants, the scratch baseline, the distilled student and
    the students it is compared with (`compare_students`, distilled the same way)."""
    recipe = ctx.recipe
    d = recipe.distill
    run = ctx.ledger.run_stage
    check_recipe(recipe)
    check_data(recipe, ctx.dataset)
    if recipe.teachers is None:
        teachers = [run(train_stage(ctx, SINGLE_TEACHER, TrainSection("teacher")))]
        parent = teachers[0]
    else:
        teachers = [run(train_stage(ctx, name, TrainSection("teachers", i)))
                    for i, name in enumerate(teacher_names(recipe))]
        parent = run(ensemble_stage(ctx, teachers, d.teacher_weights))
    for i, cfg in enumerate(recipe.assistants):
        cfg = cfg.model_copy(update={"arch": d.student_arch(cfg.arch)})
        teachers = [run(train_stage(ctx, f"assistant_{i + 1}", TrainSection("assistants", i), cfg=cfg,
                                    teachers=teachers, parent=parent, stage="distill"))]
        parent = teachers[0]
    if d.scratch_baseline:
        # The fair baseline: the best scratch training at the distilled student's budget (same epochs and
        # optimizer, live augmentation, the same input size and mixup), never a handicapped one (issue 21).
        run(train_stage(ctx, SCRATCH, TrainSection("student"), mixup=d.mixup))
    if _bank_control(recipe):
        # A control: the same student on the teacher bank's fixed views, without the teacher.
        run(train_stage(ctx, SCRATCH_BANK, TrainSection("student"), fixed_views=True, mixup=d.mixup))
    student = recipe.student.model_copy(update={"arch": d.student_arch(recipe.student.arch)})
    run(train_stage(ctx, STUDENT, TrainSection("student"), cfg=student, teachers=teachers, parent=parent,
                    stage="distill"))
    for i, cfg in enumerate(recipe.compare_students):  # the same teacher(s) and method, another student
        cfg = cfg.model_copy(update={"arch": d.student_arch(cfg.arch)})
        run(train_stage(ctx, compare_name(i), TrainSection("compare_students", i), cfg=cfg, teachers=teachers,
                        parent=parent, stage="distill"))
