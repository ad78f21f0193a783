"""Compression as pipeline stages: each method takes a variant and emits a new, measured variant.

Each function here is the stage of a method registered in `medlite.compress.registry` (which
declares its config section and the formats it accepts and emits). Names make the lineage
readable: `<parent>_pruned` (structured, channels removed), `<parent>_sparse` (unstructured
magnitude pruning), `<parent>_int8_dynamic`, `<parent>_int8_static`, `<parent>_int8_qat`,
`<parent>_fp16` (float16 ONNX, `medlite.compress.fp16`), and
chains such as `student_kd_pruned_int8_qat` (`compress.chains`). Decisions use lineage data
(`Variant.parent`, `.teachers`, `.train_section`), never names. Every stage is cached like the
training stages: rerunning an unchanged recipe redoes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.compress import registry
from medlite.context import Context
from medlite.errors import UsageError
from medlite.stage import Output, Stage
from medlite.variant import Variant, trained_root


def check_targets(recipe, available: list[str]) -> None:
    """Fail before any training when `compress.targets` names a variant this recipe never makes."""
    for target in recipe.compress.targets:
        if target not in available:
            raise UsageError(f"compress.targets: no variant {target!r} in this recipe (choose from {', '.join(available)})")


def _lineage(ctx, parent):
    """The training settings and distillation source for fine-tuning a compressed copy of `parent`.

    Found by lineage, never by name: the trained variant `parent` descends from (the root)
    recorded which recipe section trained it (`train_section`) and which variants it was
    distilled from (`teachers`). Fine-tuning distils from the same teachers as the root's training
    (all of them, weighted as in `distill.teacher_weights`, for a student of several teachers); a
    root that had none (a teacher, a scratch student) distils from its own uncompressed self: on a
    few hundred images, soft targets recover a pruned or fake-quantized network without the
    overfitting that labels alone cause.
    """
    root = trained_root(parent, ctx.variants)
    if root.train_section is None:
        raise UsageError(f"compress: cannot fine-tune {parent.name}: its lineage records no training section")
    sources = list(root.teachers) if root.teachers else [root.name]
    missing = [s for s in sources if s not in ctx.variants]
    if missing:
        raise UsageError(f"compress: cannot fine-tune {parent.name}: its distillation source {missing[0]!r} is not in this run")
    return root.train_section.resolve(ctx.recipe), [ctx.variants[s] for s in sources]


def _teachers_for(ctx, parent, finetune_cfg) -> list:
    """The variants a fine-tune distils from (none when the method's `distill` is off)."""
    return _lineage(ctx, parent)[1] if finetune_cfg.distill else []


def _calibration(ctx, count: int, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of training images at `variant`'s input size, normalised exactly as at
    inference, and their labels."""
    from medlite.data.preprocess import normalize

    data = ctx.data_for(variant)  # already at the variant's size (resized once per run)
    train = data.splits["train"]
    rng = np.random.default_rng(ctx.recipe.seed)
    idx = np.sort(rng.permutation(len(train))[: min(count, len(train))])
    return normalize(train.images[idx], data.preprocess), train.labels[idx]


def _finetune(ctx, name: str, model, parent, finetune_cfg, *, callbacks=(), select_best: bool = True):
    from medlite.train import fit

    base_cfg, _ = _lineage(ctx, parent)
    teachers = _teachers_for(ctx, parent, finetune_cfg)
    cfg = base_cfg.model_copy(
        update={"epochs": finetune_cfg.epochs, "lr": finetune_cfg.lr, "schedule": "cosine", "pretrained": None}
    )
    how = f", distilling from {' + '.join(t.name for t in teachers)}" if teachers else ""
    ctx.say(f"{name}: fine-tuning {cfg.epochs} epochs at lr {cfg.lr:g}{how}")
    teacher_models = [ctx.models.load(t) for t in teachers]
    result = fit(
        model, ctx.dataset, cfg, data_cfg=ctx.recipe.data, seed=ctx.recipe.seed, log_dir=ctx.run.stage_logs(name),
        label=name, teacher=teacher_models or None,
        distill=ctx.recipe.distill if teachers else None, callbacks=callbacks, device=ctx.device,
        say=ctx.say, progress=ctx.progress, select_best=select_best, score_start=True,
        # The copy keeps its parent's input size; each teacher sees the views at its own.
        input_size=ctx.input_size(parent), teacher_sizes=[ctx.input_size(t) for t in teachers] or None,
    )
    if result.best_epoch < 0:
        ctx.say(f"{name}: no fine-tuning epoch beat the starting weights on validation: kept them")
    return result


def variant_name(method: str, parent: Variant) -> str:
    """`<parent><suffix>`: the registry's suffix is the one place a compressed variant's name is made."""
    return parent.name + registry.get(method).suffix


def _stage(ctx: Context, method: str, parent: Variant, make) -> Stage[Variant]:
    """The Stage of one compression method applied to `parent`: `make(path) -> facts` writes the file.

    The key covers the method's recipe section, its schema version, the parent artifact and,
    for methods that fine-tune, the distillation source and the family's training settings.
    `make` may return `warnings` (kept on the variant) and a `name` that replaces the default
    one when the result is not what the method's name promises (the file is renamed to match).
    """
    from medlite.compress.builtin import FineTune

    spec = registry.get(method)
    cfg = getattr(ctx.recipe.compress, spec.config) if spec.config else None
    name = variant_name(method, parent)
    finetunes = isinstance(cfg, FineTune)
    teachers = _teachers_for(ctx, parent, cfg) if finetunes else []
    config = [cfg.model_dump() if cfg is not None else None, ctx.dataset.fingerprint(), ctx.recipe.seed,
              _lineage(ctx, parent)[0].model_dump() if finetunes else None]
    path = ctx.run.models / f"{name}.onnx"

    def compute() -> Output:
        target = path
        facts = make(target)
        warnings = facts.pop("warnings", [])
        final = facts.pop("name", name)
        if final != name:  # the result is not what the name says: the variant (and its file) say so
            renamed = target.with_name(f"{final}.onnx")
            target.replace(renamed)
            target = renamed
        variant = Variant(name=final, parent=parent.name, stage=method, arch=parent.arch, file=ctx.run.rel(target),
                          teachers=[t.name for t in teachers], **facts)
        for warning in warnings:
            ctx.warn(variant, warning)
        files = [target] + ([ctx.run.root / variant.checkpoint] if variant.checkpoint else [])
        return Output(variant.to_record(), files)

    def plan() -> Variant:
        return ctx.add(Variant(name=name, parent=parent.name, stage=method, arch=parent.arch,
                               teachers=[t.name for t in teachers], file=ctx.run.rel(path), planned=True))

    return Stage(name=name, kind=method, schema=spec.schema, inputs=[parent, *teachers], config=config,
                 compute=compute, emit=lambda facts: ctx.add(Variant.from_dict(facts)), plan=plan, bucket=f"compress.{method}", announce=ctx.run.rel(path))


def _quantized_facts(ctx, parent, path: Path, facts: dict) -> dict:
    """Size facts of an int8 (or float16) file: parameter counts and MACs are the parent's, bytes are its own."""
    from medlite.export.onnx import artifact_bytes
    from medlite.models.complexity import gzip_bytes

    parent_bytes = parent.file_bytes or 1
    file_bytes = artifact_bytes(path)
    facts = dict(facts)
    warnings = facts.pop("warnings", [])
    return {
        "warnings": warnings,
        "format": facts.get("format", "onnx-int8-qdq"),
        "params": parent.params, "nonzero_params": parent.nonzero_params, "macs": parent.macs,
        "sparsity": parent.sparsity, "file_bytes": file_bytes, "gzip_bytes": gzip_bytes(path),
        "compress": {**facts, "size_vs_parent": round(file_bytes / parent_bytes, 4)},
    }


# -- methods ----------------------------------------------------------------------------


def structured(ctx, parent):
    from medlite.compress.prune import prune_structured
    from medlite.export.onnx import export_onnx
    from medlite.models.complexity import describe_model
    from medlite.models.weights import save_state

    cfg = ctx.recipe.compress.prune_structured
    name = variant_name("prune_structured", parent)

    def make(path: Path) -> dict:
        import torch

        model = ctx.models.load(parent)
        batch = None
        if cfg.importance == "taylor":  # Taylor importance needs gradients from a labelled batch
            images, labels = _calibration(ctx, 64, parent)
            batch = (torch.from_numpy(images), torch.from_numpy(labels))
        pruned = prune_structured(model, ctx.models.example_input(parent), cfg.ratio, cfg.importance, cfg.ignore_layers,
                                  cfg.global_pruning, batch=batch)
        ctx.say(f"{name}: removed {cfg.ratio:.0%} of the channels ({cfg.importance} importance)")
        result = _finetune(ctx, name, pruned, parent, cfg)
        weights = ctx.run.checkpoints / f"{name}.safetensors"
        # `structure: pruned` tells the loader to rebuild the layers at the saved widths (no pickle).
        save_state(pruned, weights, metadata={"arch": parent.arch, "variant": name, "structure": "pruned"})
        _check_reload(ctx, parent, pruned, weights)
        check = export_onnx(pruned, ctx.data_for(parent).preprocess, path, {"medlite.variant": name})
        facts = describe_model(pruned, ctx.models.example_input(parent), path)
        facts["compress"] = {
            "method": "prune_structured", "ratio": cfg.ratio, "importance": cfg.importance,
            "params_vs_parent": round(facts["params"] / parent.params, 4),
            "macs_vs_parent": round(facts["macs"] / parent.macs, 4), "weights": ctx.run.rel(weights),
        }
        return {**facts, "checkpoint": ctx.run.rel(weights), "export": {"max_abs_diff": check["max_abs_diff"]},
                "train": result.to_dict(), "warnings": result.warnings}

    return _stage(ctx, "prune_structured", parent, make)


def unstructured(ctx, parent):
    from medlite.compress.prune import GradualMagnitudePruning
    from medlite.export.onnx import export_onnx
    from medlite.models.complexity import describe_model

    cfg = ctx.recipe.compress.prune_unstructured
    name = variant_name("prune_unstructured", parent)

    def make(path: Path) -> dict:
        model = ctx.models.load(parent)
        schedule = GradualMagnitudePruning(cfg.initial_sparsity, cfg.final_sparsity, cfg.scope)
        # The last epoch, not the best one: earlier epochs have not reached the final sparsity.
        result = _finetune(ctx, name, model, parent, cfg, callbacks=(schedule,), select_best=False)
        check = export_onnx(model, ctx.data_for(parent).preprocess, path, {"medlite.variant": name})
        facts = describe_model(model, ctx.models.example_input(parent), path)
        facts["compress"] = {
            "method": "prune_unstructured", "target_sparsity": cfg.final_sparsity, "scope": cfg.scope,
            "note": "dense ONNX stores zeros: file_bytes does not shrink; gzip_bytes shows the saving",
            "gzip_vs_parent": round(facts["gzip_bytes"] / (parent.gzip_bytes or 1), 4),
        }
        ctx.say(f"{name}: {facts['sparsity']:.1%} of weights are zero; gzip {facts['gzip_bytes']:,} B")
        return {**facts, "export": {"max_abs_diff": check["max_abs_diff"]}, "train": result.to_dict(),
                "warnings": result.warnings}

    return _stage(ctx, "prune_unstructured", parent, make)


def dynamic(ctx, parent):
    from medlite.compress.quantize import quantize_dynamic

    name = variant_name("int8_dynamic", parent)

    def make(path: Path) -> dict:
        facts = quantize_dynamic(ctx.run.root / parent.file, path)
        out = _quantized_facts(ctx, parent, path, {**facts, "method": "int8_dynamic"})
        if facts.get("dense_only"):
            # ConvInteger could not be used: only the dense layers are int8. Say so in the name.
            out["name"] = f"{name}_dense"
        return out

    return _stage(ctx, "int8_dynamic", parent, make)


def static(ctx, parent):
    from medlite.compress.quantize import quantize_static

    cfg = ctx.recipe.compress.int8_static
    name = variant_name("int8_static", parent)

    def make(path: Path) -> dict:
        calibration, _ = _calibration(ctx, cfg.calibration_images, parent)
        facts = quantize_static(ctx.run.root / parent.file, path, calibration, method=cfg.calibration_method,
                                per_channel=cfg.per_channel, percentile=cfg.percentile)
        ctx.say(f"{name}: int8 QDQ ({cfg.calibration_method} calibration on {len(calibration)} images)")
        return _quantized_facts(ctx, parent, path, {**facts, "method": "int8_static"})

    return _stage(ctx, "int8_static", parent, make)


def fp16(ctx, parent):
    from medlite.compress.fp16 import convert_fp16

    name = variant_name("fp16", parent)

    def make(path: Path) -> dict:
        facts = convert_fp16(ctx.run.root / parent.file, path)
        ctx.say(f"{name}: float16 inside, float32 input and output ({facts['cast_nodes']} casts inserted)")
        return _quantized_facts(ctx, parent, path, facts)

    return _stage(ctx, "fp16", parent, make)


def qat(ctx, parent):
    import torch

    from medlite.compress.qat import export_qat, prepare_qat

    cfg = ctx.recipe.compress.int8_qat
    name = variant_name("int8_qat", parent)

    def make(path: Path) -> dict:
        calibration, _ = _calibration(ctx, cfg.calibration_images, parent)
        model = prepare_qat(ctx.models.load(parent), torch.from_numpy(calibration[:64]))
        result = _finetune(ctx, name, model, parent, cfg)
        facts = export_qat(model, ctx.data_for(parent).preprocess, path, calibration)
        out = _quantized_facts(ctx, parent, path, {**facts, "method": "int8_qat"})
        return {**out, "train": result.to_dict(), "warnings": result.warnings + out["warnings"]}

    return _stage(ctx, "int8_qat", parent, make)


def _check_reload(ctx, parent, pruned, weights: Path) -> None:
    """The pruned checkpoint must rebuild the very model it came from (pruned -> QAT / distillation)."""
    import torch

    from medlite.variant import Variant

    probe = Variant(name="probe", parent=None, stage="probe", arch=parent.arch, checkpoint=ctx.run.rel(weights),
                    training={"image_size": ctx.input_size(parent)})
    restored = ctx.models.load(probe).eval()
    x = ctx.models.example_input(parent)
    with torch.no_grad():
        if not torch.allclose(restored(x), pruned.eval()(x), atol=1e-5):
            raise UsageError(f"{weights}: the pruned checkpoint does not rebuild the pruned model")


def run_compression(ctx: Context) -> None:
    """Apply each method, then each chain, to each target; a step two paths share runs once.

    `compress.methods` are one-step chains; `compress.chains` (validated against the registry's
    formats when the recipe loads) apply their methods in order, each to the previous result.
    """
    cfg = ctx.recipe.compress
    check_targets(ctx.recipe, list(ctx.variants))
    chains = [[method] for method in cfg.methods] + [list(chain) for chain in cfg.chains]
    made: dict[tuple[str, str], object] = {}
    for target in cfg.targets:
        for chain in chains:
            variant = ctx.variants[target]
            for method in chain:
                step = (variant.name, method)
                if step not in made:
                    made[step] = ctx.ledger.run_stage(registry.get(method).load()(ctx, variant))
                variant = made[step]
