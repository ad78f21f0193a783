"""The stage graph: data -> teacher(s) -> students -> export -> compress -> other formats ->
evaluate -> predict -> deploy -> bench -> explain -> report, declared once in `GRAPH`.

Every model the pipeline makes is a *variant* with a parent, the stage that made it, an
artifact in `models/` and the runtime that runs it. Every cached step is a `medlite.stage.Stage`,
skipped on a rerun when its inputs (config, data, parent artifacts) are unchanged and its
outputs are intact. `dry_run` walks the same graph and says which stages would be reused.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from medlite.errors import MedliteError, UsageError
from medlite.recipe import Recipe, data_identity, dump_recipe
from medlite.runstate import RESOLVED_RECIPE, RunDir, atomic_path, write_atomic, write_error, write_json
from medlite.bench.stage import bench_stage
from medlite.compress import registry as compress_registry
from medlite.compress.stages import check_targets, run_compression
from medlite.context import Context
from medlite.data import load_dataset, write_splits_csv
from medlite.data.config import canonical_data
from medlite.data.duplicates import find_duplicates, known_split_warnings, save_hashes
from medlite.distill.stages import check_recipe as check_distillation, run_distillation, variant_names
from medlite.evaluate.operating_point import check_config, predict_stage
from medlite.evaluate.external_common import HASHES_NAME
from medlite.evaluate.stage import evaluate_stage
from medlite.explain.stage import stage_explain
from medlite.export import registry as export_registry
from medlite.export.card import write_model_cards
from medlite.report import write_report
from medlite.runtime import artifact_bytes
from medlite.stage import PlannedStage, Stage
from medlite.train import checkpointing as grad_checkpointing
from medlite.train.device import resolve_device
from medlite.variant import Variant


def library_versions() -> dict[str, str]:
    names = ["medlite", "torch", "torchvision", "timm", "lightning", "onnx", "onnxruntime", "torch-pruning",
             "numpy", "scikit-learn", "medmnist", "pillow", "pydantic"]
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# -- steps that are not cached stages ---------------------------------------------------------


def load_data(ctx: Context) -> None:
    with ctx.ledger.timed("data"):
        ctx.dataset = load_dataset(ctx.recipe.data, ctx.data_root, ctx.recipe.seed)
        if not ctx.planning:
            _write_samples(ctx)
            write_splits_csv(ctx.dataset, ctx.run.root / "splits.csv")  # which image went where, by group
            hashes = _check_duplicates(ctx)
            # Kept with the models: evaluating them on other data can say which images they have seen.
            save_hashes(ctx.run.models / HASHES_NAME, hashes["train"])
    d = ctx.dataset
    check_config(ctx.recipe, d.class_names, multilabel=d.multilabel)
    sizes = ", ".join(f"{k} {len(s)}" for k, s in d.splits.items())
    ctx.say(f"data: {d.name} ({d.source}), {d.num_classes} classes, {sizes}; {d.image_size}px x {d.channels}ch")
    for warning in getattr(d, "warnings", []):
        ctx.say(f"data: warning: {warning}")


def _check_duplicates(ctx: Context) -> dict[str, np.ndarray]:
    """Exact and near-duplicate images across splits (and a known fault of an official split): kept in
    results.json `duplicates` and said as the data's warnings (the table and the report show them).
    Returns every split's perceptual hashes (computed once, here)."""
    d = ctx.dataset
    report = find_duplicates(d)
    ctx.duplicates = report.to_dict()
    for pair, counts in report.counts.items():
        seen, where = pair.split("/")[1], pair.split("/")[0]
        if counts.images_b_with_copy:
            d.warnings.append(f"{counts.images_b_with_copy} {seen} images have an exact or near copy in {where} "
                              f"(perceptual hash within {report.max_distance} bits; pairs in results.json `duplicates`)")
    d.warnings.extend(w for w in known_split_warnings(d) if w not in d.warnings)
    return report.hashes


def _write_samples(ctx: Context, per_class: int = 2) -> None:
    """A few real test images as PNG: for input-preparation timing and for trying the edge runner.

    Named `<class>_<index in the test split>.png`, so their predictions can be checked against the run's.
    """

    test = ctx.dataset.splits["test"]
    for cls, name in enumerate(ctx.dataset.class_names):
        for i in np.flatnonzero(test.labels == cls)[:per_class]:
            image = test.images[i]
            safe = "".join(c if c.isalnum() else "_" for c in name)
            path = ctx.run.samples / f"{safe}_{i}.png"
            if not path.exists():
                with atomic_path(path) as tmp:
                    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(tmp, format="PNG")


def _measure_deployed_files(ctx: Context) -> None:
    """`file_bytes` of every variant as deployed: after the operating point and model card were written."""
    for variant in ctx.variants.values():
        if variant.file:
            variant.file_bytes = artifact_bytes(ctx.run.root / variant.file, variant.runtime)


def results_document(ctx: Context, wall_seconds: float) -> dict:
    return {
        "medlite": library_versions()["medlite"],
        "recipe": ctx.recipe.name,
        "seed": ctx.recipe.seed,
        "dataset": ctx.dataset.summary(),
        "duplicates": ctx.duplicates,  # exact and near copies across splits (medlite.data.duplicates)
        "variants": [v.to_dict() for v in ctx.variants.values()],
        "skipped": ctx.skipped,  # variants a converter could not make, each with a one-line reason
        "timings": {**ctx.ledger.timings, "total": round(wall_seconds, 2)},
        "timings_reused": ctx.ledger.reused_timings,  # seconds measured by the earlier runs whose stages were reused
        "cached_stages": ctx.ledger.cached_stages,
        "versions": library_versions(),
    }


def write_results(ctx: Context, wall_seconds: float, report: bool = True) -> dict:
    results = results_document(ctx, wall_seconds)
    write_json(ctx.run.root / "results.json", results)
    if report:  # the report with its figures and tables (medlite.report)
        with ctx.ledger.timed("report"):
            write_report(ctx.run.root, results, ctx.dataset)
    return results


# -- the stage graph, top to bottom -------------------------------------------------------------


def _every_variant(make: Callable[[Context, Variant], Stage]) -> Callable[[Context], None]:
    def step(ctx: Context) -> None:
        for variant in list(ctx.variants.values()):
            ctx.ledger.run_stage(make(ctx, variant))
    return step


def _export_base(ctx: Context) -> None:
    export_registry.base_format().load()(ctx)


def _export_other_formats(ctx: Context) -> None:
    for name in ctx.recipe.export.formats:
        fmt = export_registry.get(name)
        if not fmt.base:
            fmt.load()(ctx)


def _deployed_files(ctx: Context) -> None:
    """The model card beside every deployed file, then every file's size as deployed; results.json
    is written before benchmarking (the bench reads it, and a failure later keeps it)."""
    write_model_cards(ctx, library_versions()["medlite"])
    _measure_deployed_files(ctx)
    write_results(ctx, time.perf_counter() - ctx.started, report=False)


def _bench(ctx: Context) -> None:
    ctx.ledger.run_stage(bench_stage(ctx))


def _report(ctx: Context) -> None:
    ctx.results = write_results(ctx, time.perf_counter() - ctx.started)


@dataclass(frozen=True)
class Step:
    """One step of the graph: a function of the context, run when the recipe asks for it."""

    name: str
    run: Callable[[Context], None]
    doc: str
    when: Callable[[Recipe], bool] = lambda recipe: True
    writes_only: bool = False  # writes files and computes nothing a later stage keys on: skipped in a dry run
    keep_on_failure: bool = False  # a failure here still evaluates and records the variants made so far


# The whole pipeline, in order. Each step's stages are keyed, reused, timed and stored by
# `StageLedger.run_stage`; `medlite run --dry-run` walks the same list without computing anything.
GRAPH: tuple[Step, ...] = (
    Step("data", load_data, "read the dataset, split it, check the recipe against its classes"),
    Step("train", run_distillation, "teacher(s), ensemble, assistants, scratch baseline, distilled student"),
    Step("export", _export_base, "every trained variant to the base format (ONNX), checked against PyTorch"),
    Step("compress", run_compression, "each compression method and chain on each target",
         when=lambda r: bool(r.compress.methods or r.compress.chains), keep_on_failure=True),
    Step("export_formats", _export_other_formats, "the other deployment formats (LiteRT)",
         when=lambda r: len(r.export.formats) > 1, keep_on_failure=True),
    Step("evaluate", _every_variant(evaluate_stage), "metrics of every deployed file, in its runtime"),
    Step("predict", _every_variant(predict_stage), "predictions files and the operating point chosen on validation"),
    Step("deploy", _deployed_files, "model cards, deployed sizes, results.json", writes_only=True),
    Step("bench", _bench, "latency, memory and load time per variant, each in a fresh process",
         when=lambda r: r.bench.enabled),
    Step("explain", stage_explain, "maps, faithfulness and lineage agreement", when=lambda r: r.explain.enabled),
    Step("report", _report, "results.json and report.html", writes_only=True),
)


def check_recipe(recipe: Recipe) -> None:
    """Everything that can be checked before the data is read or anything is written."""
    check_distillation(recipe)  # every architecture, and the distillation setup
    grad_checkpointing.check(recipe)  # a model without it refused now, not after the teacher trained
    if recipe.compress.methods or recipe.compress.chains:
        check_targets(recipe, variant_names(recipe))
    for method in dict.fromkeys([*recipe.compress.methods, *(m for chain in recipe.compress.chains for m in chain)]):
        spec = compress_registry.get(method)
        missing = spec.missing_packages()
        if missing:
            key = "compress.methods" if method in recipe.compress.methods else "compress.chains"
            raise UsageError(f"{key}: {method} needs {', '.join(missing)}, not installed ({spec.install_hint})")
    for name in recipe.export.formats:  # a missing converter fails now, never as a silent skip later
        fmt = export_registry.get(name)
        missing = fmt.missing_packages()
        if missing:
            raise UsageError(f"export.formats: {name} needs {', '.join(missing)}, not installed ({fmt.install_hint})")
    if "litert" in recipe.export.formats and "fp16" in recipe.export.litert.quantize:
        from medlite.export.litert import fp16_unsupported

        reason = fp16_unsupported()
        if reason:
            raise UsageError(f"export.litert.quantize: fp16 cannot be made here: {reason}")


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
    check_recipe(recipe)
    run = RunDir(out, store)
    run.open(fresh, data=data_identity(recipe), same_data=default_out, canonical=canonical_data)
    try:
        return _carry_out(recipe, run, data_root, say, progress)
    except OSError as err:
        if run.is_write_fault(err):  # a full disk or a folder we may not write: the user's to fix
            raise write_error(Path(err.filename) if err.filename else out, err) from None
        raise
    finally:
        run.close()


def _context(recipe: Recipe, run: RunDir, data_root: Path, say, progress, planning: bool = False) -> Context:
    ctx = Context(recipe, run, data_root, say, progress, planning=planning)
    ctx.device = resolve_device(recipe.device)
    ctx.started = time.perf_counter()
    return ctx


def _carry_out(recipe: Recipe, run: RunDir, data_root: Path, say: Callable[[str], None], progress: bool | None) -> dict:
    out = run.root
    write_atomic(out / RESOLVED_RECIPE, dump_recipe(recipe))
    write_json(out / "environment.json", {"versions": library_versions(), "argv": sys.argv})
    ctx = _context(recipe, run, data_root, say, progress)
    for note in recipe._notes:  # what loading the recipe did that the user did not write
        say(f"recipe: {note}")
    for step in GRAPH:
        if not step.when(recipe):
            continue
        try:
            step.run(ctx)
        except MedliteError:  # the user's fault or an internal failure: keep what was made, then say it
            if not step.keep_on_failure:
                raise
            # Keep (and report) every variant made so far, then say what went wrong.
            _every_variant(evaluate_stage)(ctx)
            write_results(ctx, time.perf_counter() - ctx.started)
            raise
    return ctx.results


def plan_pipeline(recipe: Recipe, out: Path, data_root: Path, say: Callable[[str], None] = lambda _: None) -> Context:
    """Walk the graph without computing or writing anything: the context's `ledger.plan` lists every
    stage with `reuse` (its record in `out` is valid for these inputs) or `run`."""
    check_recipe(recipe)
    ctx = _context(recipe, RunDir(out), data_root, say, progress=False, planning=True)
    for step in GRAPH:
        if step.when(recipe) and not step.writes_only:
            step.run(ctx)
    return ctx


def dry_run(recipe: Recipe, out: Path, data_root: Path, say: Callable[[str], None] = print) -> list[PlannedStage]:
    """`medlite run --dry-run`: print the steps, the stages and variants a run would make, and which it would reuse."""
    ctx = plan_pipeline(recipe, out, data_root)
    say(f"recipe {recipe.name} into {out} (dry run: nothing is computed or written)")
    for note in recipe._notes:
        say(f"recipe: {note}")
    for step in GRAPH:
        state = "" if step.when(recipe) else "  (off in this recipe)"
        say(f"  {step.name:<15} {step.doc}{state}")
    plan = ctx.ledger.plan
    width = max((len(p.name) for p in plan), default=10)
    say("stages:")
    for p in plan:
        inputs = f" <- {', '.join(dict.fromkeys(p.inputs))}" if p.inputs else ""
        say(f"  {p.action:<6} {p.name:<{width}} [{p.kind}]{inputs}")
    say("variants: " + ", ".join(ctx.variants))
    reused = sum(p.action == "reuse" for p in plan)
    say(f"{reused} of {len(plan)} stages would be reused, {len(plan) - reused} run")
    return plan
