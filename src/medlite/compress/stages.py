"""Compression as pipeline stages: each method takes a variant and emits a new, measured variant.

Names make the lineage readable: `<parent>_pruned` (structured, channels removed),
`<parent>_sparse` (unstructured magnitude pruning), `<parent>_int8_dynamic`,
`<parent>_int8_static`, `<parent>_int8_qat`, and chains such as `student_kd_pruned_int8_static`.
Every stage is cached like the training stages: rerunning an unchanged recipe redoes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.errors import UsageError
from medlite.runstate import fingerprint


def check_targets(recipe, available: list[str]) -> None:
    """Fail before any training when `compress.targets` names a variant this recipe never makes."""
    for target in recipe.compress.targets:
        if target not in available:
            raise UsageError(f"compress.targets: no variant {target!r} in this recipe (choose from {', '.join(available)})")


def _base_train_cfg(ctx, variant):
    """Fine-tuning starts from the settings the variant's family was trained with."""
    return ctx.recipe.teacher if variant.name.startswith("teacher") else ctx.recipe.student


def _calibration(ctx, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of training images (normalised exactly as at inference) and their labels."""
    from medlite.data.preprocess import normalize

    train = ctx.dataset.splits["train"]
    rng = np.random.default_rng(ctx.recipe.seed)
    idx = np.sort(rng.permutation(len(train))[: min(count, len(train))])
    return normalize(train.images[idx], ctx.dataset.preprocess), train.labels[idx]


def _teacher_for(ctx, finetune_cfg):
    """The distillation source for fine-tuning a compressed copy: the recipe's teacher.

    For the teacher's own variants that is the uncompressed teacher itself (self-distillation):
    on a few hundred images, soft targets recover a pruned or fake-quantized network without the
    overfitting that labels alone cause.
    """
    if not finetune_cfg.distill:
        return None
    return ctx.variants.get("teacher")


def _finetune(ctx, name: str, model, parent, finetune_cfg, *, callbacks=(), select_best: bool = True):
    from medlite.train import fit

    teacher = _teacher_for(ctx, finetune_cfg)
    cfg = _base_train_cfg(ctx, parent).model_copy(
        update={"epochs": finetune_cfg.epochs, "lr": finetune_cfg.lr, "schedule": "cosine", "pretrained": None}
    )
    how = f", distilling from {teacher.name}" if teacher else ""
    ctx.say(f"{name}: fine-tuning {cfg.epochs} epochs at lr {cfg.lr:g}{how}")
    result = fit(
        model, ctx.dataset, cfg, data_cfg=ctx.recipe.data, seed=ctx.recipe.seed, log_dir=ctx.run.logs / name,
        label=name, teacher=ctx.load_variant_model(teacher) if teacher else None,
        distill=ctx.recipe.distill if teacher else None, callbacks=callbacks, device=ctx.device,
        say=ctx.say, progress=ctx.progress, select_best=select_best, score_start=True,
    )
    if result.best_epoch < 0:
        ctx.say(f"{name}: no fine-tuning epoch beat the starting weights on validation: kept them")
    return result


def _stage(ctx, name: str, parent, method: str, cfg, make):
    """Run `make(path) -> facts` unless an identical earlier run left its artifact intact.

    `cfg` is the method's recipe section (None when it has no settings); the key also covers the
    parent artifact and, for methods that fine-tune, the teacher and the family's training settings.
    """
    from medlite.variant import Variant
    from medlite.recipe import FineTune

    finetunes = isinstance(cfg, FineTune)
    teacher = _teacher_for(ctx, cfg) if finetunes else None
    key = fingerprint(
        method, cfg.model_dump() if cfg is not None else None, ctx.artifact_hash(parent),
        ctx.artifact_hash(teacher) if teacher else None, ctx.dataset.fingerprint(), ctx.recipe.seed,
        _base_train_cfg(ctx, parent).model_dump() if finetunes else None,
    )
    path = ctx.run.models / f"{name}.onnx"
    facts = ctx.reuse(name, key, announce=ctx.run.rel(path))
    if facts is not None:
        return ctx.add(Variant.from_dict(facts))
    with ctx.timed(f"compress.{method}"):
        facts = make(path)
    variant = Variant(name=name, parent=parent.name, stage=method, arch=parent.arch, file=ctx.run.rel(path), **facts)
    outputs = [path] + [ctx.run.root / p for p in [facts.get("compress", {}).get("weights")] if p]
    ctx.run.store(name, key, outputs, variant.to_dict())
    return ctx.add(variant)


def _quantized_facts(ctx, parent, path: Path, facts: dict) -> dict:
    """Size facts of an int8 file: parameter counts and MACs are the parent's, bytes are its own."""
    from medlite.export.onnx import artifact_bytes
    from medlite.models.complexity import gzip_bytes

    parent_bytes = parent.file_bytes or 1
    file_bytes = artifact_bytes(path)
    return {
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
    name = f"{parent.name}_pruned"

    def make(path: Path) -> dict:
        import torch

        model = ctx.load_variant_model(parent)
        batch = None
        if cfg.importance == "taylor":  # Taylor importance needs gradients from a labelled batch
            images, labels = _calibration(ctx, 64)
            batch = (torch.from_numpy(images), torch.from_numpy(labels))
        pruned = prune_structured(model, ctx.example_input(), cfg.ratio, cfg.importance, cfg.ignore_layers,
                                  cfg.global_pruning, batch=batch)
        ctx.say(f"{name}: removed {cfg.ratio:.0%} of the channels ({cfg.importance} importance)")
        result = _finetune(ctx, name, pruned, parent, cfg)
        weights = ctx.run.checkpoints / f"{name}.safetensors"
        save_state(pruned, weights, metadata={"arch": parent.arch, "variant": name, "pruned": "structured"})
        check = export_onnx(pruned, ctx.dataset.preprocess, path, {"medlite.variant": name})
        facts = describe_model(pruned, ctx.example_input(), path)
        facts["compress"] = {
            "method": "prune_structured", "ratio": cfg.ratio, "importance": cfg.importance,
            "params_vs_parent": round(facts["params"] / parent.params, 4),
            "macs_vs_parent": round(facts["macs"] / parent.macs, 4), "weights": ctx.run.rel(weights),
        }
        return {**facts, "export": {"max_abs_diff": check["max_abs_diff"]}, "train": result.to_dict()}

    return _stage(ctx, name, parent, "prune_structured", cfg, make)


def unstructured(ctx, parent):
    from medlite.compress.prune import GradualMagnitudePruning
    from medlite.export.onnx import export_onnx
    from medlite.models.complexity import describe_model

    cfg = ctx.recipe.compress.prune_unstructured
    name = f"{parent.name}_sparse"

    def make(path: Path) -> dict:
        model = ctx.load_variant_model(parent)
        schedule = GradualMagnitudePruning(cfg.initial_sparsity, cfg.final_sparsity, cfg.scope)
        # The last epoch, not the best one: earlier epochs have not reached the final sparsity.
        result = _finetune(ctx, name, model, parent, cfg, callbacks=(schedule,), select_best=False)
        check = export_onnx(model, ctx.dataset.preprocess, path, {"medlite.variant": name})
        facts = describe_model(model, ctx.example_input(), path)
        facts["compress"] = {
            "method": "prune_unstructured", "target_sparsity": cfg.final_sparsity, "scope": cfg.scope,
            "note": "dense ONNX stores zeros: file_bytes does not shrink; gzip_bytes shows the saving",
            "gzip_vs_parent": round(facts["gzip_bytes"] / (parent.gzip_bytes or 1), 4),
        }
        ctx.say(f"{name}: {facts['sparsity']:.1%} of weights are zero; gzip {facts['gzip_bytes']:,} B")
        return {**facts, "export": {"max_abs_diff": check["max_abs_diff"]}, "train": result.to_dict()}

    return _stage(ctx, name, parent, "prune_unstructured", cfg, make)


def dynamic(ctx, parent):
    from medlite.compress.quantize import quantize_dynamic

    name = f"{parent.name}_int8_dynamic"

    def make(path: Path) -> dict:
        facts = quantize_dynamic(ctx.run.root / parent.file, path)
        return _quantized_facts(ctx, parent, path, {**facts, "method": "int8_dynamic"})

    return _stage(ctx, name, parent, "int8_dynamic", None, make)


def static(ctx, parent):
    from medlite.compress.quantize import quantize_static

    cfg = ctx.recipe.compress.int8_static
    name = f"{parent.name}_int8_static"

    def make(path: Path) -> dict:
        calibration, _ = _calibration(ctx, cfg.calibration_images)
        facts = quantize_static(ctx.run.root / parent.file, path, calibration, method=cfg.calibration_method,
                                per_channel=cfg.per_channel, percentile=cfg.percentile)
        ctx.say(f"{name}: int8 QDQ ({cfg.calibration_method} calibration on {len(calibration)} images)")
        return _quantized_facts(ctx, parent, path, {**facts, "method": "int8_static"})

    return _stage(ctx, name, parent, "int8_static", cfg, make)


def qat(ctx, parent):
    import torch

    from medlite.compress.qat import export_qat, prepare_qat

    cfg = ctx.recipe.compress.int8_qat
    name = f"{parent.name}_int8_qat"

    def make(path: Path) -> dict:
        calibration, _ = _calibration(ctx, cfg.calibration_images)
        model = prepare_qat(ctx.load_variant_model(parent), torch.from_numpy(calibration[:64]))
        result = _finetune(ctx, name, model, parent, cfg)
        facts = export_qat(model, ctx.dataset.preprocess, path, calibration)
        out = _quantized_facts(ctx, parent, path, {**facts, "method": "int8_qat"})
        return {**out, "train": result.to_dict()}

    return _stage(ctx, name, parent, "int8_qat", cfg, make)


def run_compression(ctx) -> None:
    """Apply the recipe's methods to each target, in an order that lets chains reuse their parents."""
    cfg = ctx.recipe.compress
    check_targets(ctx.recipe, list(ctx.variants))
    methods = set(cfg.methods)
    for target in cfg.targets:
        base = ctx.variants[target]
        if "prune_structured" in methods:
            pruned = structured(ctx, base)
            if cfg.quantize_pruned and "int8_static" in methods:
                static(ctx, pruned)
        if "prune_unstructured" in methods:
            unstructured(ctx, base)
        if "int8_dynamic" in methods:
            dynamic(ctx, base)
        if "int8_static" in methods:
            static(ctx, base)
        if "int8_qat" in methods:
            qat(ctx, base)
