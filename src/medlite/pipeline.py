"""The stage graph: data -> teacher -> students -> export -> compress -> evaluate -> bench -> report.

Every model the pipeline makes is a *variant* with a parent, the stage that made it, an
artifact in `models/` and the runtime that runs it. Each stage is skipped on a rerun when
its inputs (config, data, parent artifacts) are unchanged and its outputs are intact.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medlite.errors import UsageError
from medlite.recipe import Recipe, dump_recipe
from medlite.runstate import (
    RESOLVED_RECIPE, RunDir, atomic_path, data_identity, sha256, write_atomic, write_error,
    write_json,
)
from medlite.variant import Context, Variant, stage_key


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["medlite", "torch", "torchvision", "timm", "lightning", "onnx", "onnxruntime", "torch-pruning",
             "numpy", "scikit-learn", "medmnist", "pillow", "pydantic"]
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# -- stages ---------------------------------------------------------------------------


def stage_data(ctx: Context) -> None:
    from medlite.data import load_dataset

    with ctx.timed("data"):
        ctx.dataset = load_dataset(ctx.recipe.data, ctx.data_root, ctx.recipe.seed)
        _write_samples(ctx)
    d = ctx.dataset
    sizes = ", ".join(f"{k} {len(s)}" for k, s in d.splits.items())
    ctx.say(f"data: {d.name} ({d.source}), {d.num_classes} classes, {sizes}; {d.image_size}px x {d.channels}ch")


def _write_samples(ctx: Context, per_class: int = 2) -> None:
    """A few real test images as PNG: for input-preparation timing and for trying the edge runner.

    Named `<class>_<index in the test split>.png`, so their predictions can be checked against the run's.
    """
    from PIL import Image

    test = ctx.dataset.splits["test"]
    for cls, name in enumerate(ctx.dataset.class_names):
        for i in np.flatnonzero(test.labels == cls)[:per_class]:
            image = test.images[i]
            safe = "".join(c if c.isalnum() else "_" for c in name)
            path = ctx.run.samples / f"{safe}_{i}.png"
            if not path.exists():
                with atomic_path(path) as tmp:
                    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(tmp, format="PNG")


def _train_key(ctx: Context, cfg, extra: Any = None) -> str:
    r = ctx.recipe
    pretrained = sha256(Path(cfg.pretrained)) if cfg.pretrained and Path(cfg.pretrained).is_file() else cfg.pretrained
    data_keys = r.data.model_dump(include={"augment", "balance"})
    parts = [cfg.model_dump(), data_keys, ctx.dataset.fingerprint(), r.seed, r.device, pretrained, extra]
    if r.trainer != type(r.trainer)():  # devices/strategy/precision change the numbers (default keys unchanged)
        parts.append(r.trainer.model_dump())
    return stage_key("train", *parts)


def stage_train(ctx: Context, name: str, cfg, *, teachers: list[Variant] = (), parent: Variant | None = None,
                stage: str = "train", fixed_views: bool = False, section: str | None = None) -> Variant:
    """Train one model, or distil it from `teachers` (the recipe's distill method); `parent` is the
    variant it descends from (default: the first teacher). The checkpoint is the best-validation-AUC epoch.

    `section` names the recipe section `cfg` came from (default: found by identity; `teachers.0`,
    `assistants.1` for list entries); it is recorded on the variant, so later stages find its
    training settings by lineage, not by name.
    """
    if section is None:
        section = next((f for f in type(ctx.recipe).model_fields if getattr(ctx.recipe, f) is cfg), None)
    from medlite.models import count_params
    from medlite.models.weights import save_state
    from medlite.train import fit

    teachers = list(teachers)
    parent = parent or (teachers[0] if teachers else None)
    distill = ctx.recipe.distill if teachers else None
    extra = [[ctx.artifact_hash(t) for t in teachers], distill.model_dump()] if teachers else None
    key = _train_key(ctx, cfg, [extra, fixed_views] if fixed_views else extra)
    ckpt = ctx.run.checkpoints / f"{name}.safetensors"
    facts = ctx.reuse(name, key, announce=ctx.run.rel(ckpt))
    if facts is not None:
        return ctx.add(Variant.from_dict(facts))
    if ctx.run.previous_key(name):
        ctx.say(f"{name}: recipe, data or parent changed: retraining")
    if cfg.pretrained and cfg.pretrained != "imagenet" and not Path(cfg.pretrained).is_file():
        raise UsageError(f"{name}.pretrained: weights file {cfg.pretrained!r} not found")
    with ctx.timed(name):
        model = ctx.build_model(cfg.arch, cfg.pretrained)
        teacher_models = [ctx.load_variant_model(t) for t in teachers]
        what = f"distilling {cfg.arch} from {parent.name} ({distill.method})" if teachers else f"training {cfg.arch}"
        ctx.say(f"{name}: {what} ({count_params(model):,} parameters, {cfg.epochs} epochs)")
        result = fit(
            model, ctx.dataset, cfg, data_cfg=ctx.recipe.data, seed=ctx.recipe.seed,
            log_dir=ctx.run.stage_logs(name), label=name, teacher=teacher_models or None, distill=distill,
            fixed_views=fixed_views,
            device=ctx.device, say=ctx.say, progress=ctx.progress, trainer_cfg=ctx.recipe.trainer,
        )
        save_state(model, ckpt, metadata={"arch": cfg.arch, "variant": name})
    variant = Variant(
        name=name, parent=parent.name if parent else None, stage=stage, arch=cfg.arch,
        teachers=[t.name for t in teachers], train_section=section,
        checkpoint=ctx.run.rel(ckpt), params=count_params(model), train=result.to_dict(),
    )
    for warning in result.warnings:
        ctx.warn(variant, warning)
    if result.best_epoch >= 0:
        score = f"val AUC {result.best_val_auc:.3f}" if result.best_val_auc is not None else f"by {result.selected_by}"
        ctx.say(f"{name}: best epoch {result.best_epoch + 1} ({score}), {result.seconds:.0f}s")
    ctx.store(name, key, [ckpt], variant.to_dict())
    return ctx.add(variant)


def stage_export(ctx: Context, variant: Variant) -> Variant:
    """Export a trained variant to ONNX and check it against PyTorch."""
    from medlite.models.complexity import describe_model
    from medlite.export.onnx import export_onnx

    stage = f"{variant.name}.export"
    key = stage_key("export", ctx.artifact_hash(variant), ctx.dataset.preprocess.to_dict())
    path = ctx.run.models / f"{variant.name}.onnx"
    facts = ctx.reuse(stage, key)
    if facts is None:
        with ctx.timed("export"):
            model = ctx.load_variant_model(variant)
            check = export_onnx(model, ctx.dataset.preprocess, path, {"medlite.variant": variant.name})
            facts = {"file": ctx.run.rel(path), "export": {"max_abs_diff": check["max_abs_diff"]},
                     **describe_model(model, ctx.example_input(), path)}
        ctx.store(stage, key, [path], facts)
    for k, v in facts.items():
        setattr(variant, k, v)
    return variant


def stage_evaluate(ctx: Context, variant: Variant) -> None:
    """Metrics of the deployable file, measured in its runtime on the evaluation split."""
    from medlite.evaluate import HEADLINE
    from medlite.evaluate.metrics import classification_metrics

    cfg = ctx.recipe.evaluate
    stage = f"{variant.name}.evaluate"
    key = stage_key("evaluate", ctx.artifact_hash(variant), cfg.model_dump(), ctx.dataset.fingerprint(), ctx.recipe.seed)
    facts = ctx.reuse(stage, key)
    if facts is None:
        names = list(ctx.dataset.class_names)
        with ctx.timed("evaluate"):
            split = ctx.dataset.splits[cfg.split]
            metrics = classification_metrics(ctx.probabilities(variant, cfg.split), split.labels, names,
                                             bootstrap=cfg.bootstrap, confidence=cfg.confidence, ece_bins=cfg.ece_bins,
                                             seed=ctx.recipe.seed)
            # Validation metrics (no bootstrap): what model selection (studies, tune) may look at.
            # The per-image predictions file is written by the predict stage (evaluate.operating_point).
            val = {}
            validation = ctx.dataset.splits.get("val")
            if cfg.split == "test" and validation is not None and len(validation):
                val_metrics = classification_metrics(ctx.probabilities(variant, "val"), validation.labels, names,
                                                     ece_bins=cfg.ece_bins)
                val = {k: val_metrics[k] for k in HEADLINE}
        facts = {"metrics": metrics, "val_metrics": val}
        ctx.store(stage, key, [], facts)
    variant.metrics = facts["metrics"]
    variant.val_metrics = facts.get("val_metrics", {})


def stage_bench(ctx: Context) -> None:
    from medlite.bench import bench_run_dir
    from medlite.bench.runner import machine_info

    cfg = ctx.recipe.bench
    # Timings belong to the machine that measured them: a run directory copied elsewhere re-benches.
    machine = {k: v for k, v in machine_info().items() if k in ("cpu", "cores", "platform")}
    key = stage_key("bench", cfg.model_dump(), {v.name: ctx.artifact_hash(v) for v in ctx.variants.values()}, machine)
    facts = ctx.reuse("bench", key)
    if facts is None:
        ctx.say(f"bench: timing {len(ctx.variants)} variants, each in a fresh process")
        with ctx.timed("bench"):
            facts = {"bench": bench_run_dir(ctx.run.root, cfg), "machine": machine}
        ctx.store("bench", key, [], facts)
    for name, bench in facts["bench"].items():
        if name in ctx.variants:
            ctx.variants[name].bench = bench


def _measure_deployed_files(ctx: Context) -> None:
    """`file_bytes` of every variant as deployed: after the operating point and model card were written."""
    from medlite.runtime import artifact_bytes

    for variant in ctx.variants.values():
        if variant.file:
            variant.file_bytes = artifact_bytes(ctx.run.root / variant.file, variant.runtime)


def results_document(ctx: Context, wall_seconds: float) -> dict:
    return {
        "medlite": library_versions()["medlite"],
        "recipe": ctx.recipe.name,
        "seed": ctx.recipe.seed,
        "dataset": ctx.dataset.summary(),
        "variants": [v.to_dict() for v in ctx.variants.values()],
        "skipped": ctx.skipped,  # variants a converter could not make, each with a one-line reason
        "timings": {**ctx.timings, "total": round(wall_seconds, 2)},
        "timings_reused": ctx.reused_timings,  # seconds measured by the earlier runs whose stages were reused
        "cached_stages": ctx.cached_stages,
        "versions": library_versions(),
    }


def write_results(ctx: Context, wall_seconds: float, report: bool = True) -> dict:
    results = results_document(ctx, wall_seconds)
    write_json(ctx.run.root / "results.json", results)
    if report:  # the report with its figures and tables (medlite.report)
        from medlite.report import write_report

        with ctx.timed("report"):
            write_report(ctx.run.root, results, ctx.dataset)
    return results


def run_pipeline(
    recipe: Recipe,
    out: Path,
    data_root: Path,
    *,
    fresh: bool = False,
    say: Callable[[str], None] = print,
    progress: bool | None = None,
    default_out: bool = False,
    store=None,
) -> dict:
    """Carry out a recipe into `out`; returns the results document (also written to results.json).

    `out` is locked for the run (a second live run into it is refused) and must be a folder
    medlite made, or a new one (see RunDir.open). `default_out`: `out` is the default
    `runs/<name>` the user did not choose, so it must not hold a run on other data.
    `store`: a `medlite.stagestore.StageStore` shared with other runs (a study's trials).
    """
    from medlite.distill.stages import check_recipe, variant_names

    check_recipe(recipe)  # every architecture, and the distillation setup, before anything is written
    if recipe.compress.methods or recipe.compress.chains:
        from medlite.compress.stages import check_targets

        check_targets(recipe, variant_names(recipe))
    from medlite.export.stages import check_export_formats

    check_export_formats(recipe)
    run = RunDir(out, store)
    run.open(fresh, data=data_identity(recipe), same_data=default_out)
    try:
        return _carry_out(recipe, run, data_root, say, progress)
    except OSError as err:
        if run.is_write_fault(err):  # a full disk or a folder we may not write: the user's to fix
            raise write_error(Path(err.filename) if err.filename else out, err) from None
        raise
    finally:
        run.close()


def _carry_out(recipe: Recipe, run: RunDir, data_root: Path, say: Callable[[str], None], progress: bool | None) -> dict:
    from medlite.train import resolve_device

    start = time.perf_counter()
    out = run.root
    write_atomic(out / RESOLVED_RECIPE, dump_recipe(recipe))
    write_json(out / "environment.json", {"versions": library_versions(), "argv": sys.argv})
    ctx = Context(recipe, run, data_root, say, progress)
    ctx.device = resolve_device(recipe.device)

    stage_data(ctx)
    from medlite.distill.stages import run_distillation
    from medlite.evaluate.operating_point import check_config, stage_predict

    check_config(recipe, ctx.dataset.class_names)
    run_distillation(ctx, train=stage_train)  # teacher(s), ensemble, assistants, scratch baseline, distilled student
    for variant in list(ctx.variants.values()):
        stage_export(ctx, variant)

    if recipe.compress.methods or recipe.compress.chains:
        from medlite.compress.stages import run_compression

        try:
            run_compression(ctx)
        except UsageError:
            # Keep (and report) every variant made so far, then say what went wrong.
            for variant in ctx.variants.values():
                stage_evaluate(ctx, variant)
            write_results(ctx, time.perf_counter() - start)
            raise

    from medlite.export.card import write_model_cards
    from medlite.export.stages import stage_litert_exports

    stage_litert_exports(ctx)
    for variant in ctx.variants.values():
        stage_evaluate(ctx, variant)
        stage_predict(ctx, variant)

    write_model_cards(ctx, library_versions()["medlite"])
    _measure_deployed_files(ctx)
    # Write what we have before benchmarking: the bench reads results.json, and a failure later keeps it.
    write_results(ctx, time.perf_counter() - start, report=False)
    if recipe.bench.enabled:
        stage_bench(ctx)
    if recipe.explain.enabled:
        from medlite.explain.stage import stage_explain

        stage_explain(ctx)
    return write_results(ctx, time.perf_counter() - start)
