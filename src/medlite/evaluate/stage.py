"""The evaluate stage: metrics of a variant's deployable file, measured in its runtime."""

from __future__ import annotations

from medlite.context import Context
from medlite.stage import Stage
from medlite.variant import Variant


def no_better_than_chance(metrics: dict, class_names: list[str], split: str, confidence: float) -> str | None:
    """Why a model is no better than chance on the reporting split, or None: its AUC interval includes
    0.5, or it predicts one class for every image."""
    interval = (metrics.get("ci") or {}).get("auc")
    auc = metrics.get("auc")
    if interval and interval[0] <= 0.5:
        return (f"no better than chance: {split} AUC {auc:.3f} ({confidence:.0%} CI {interval[0]:.3f}-{interval[1]:.3f}) "
                f"includes 0.5")
    matrix = metrics.get("confusion_matrix")  # rows: true class, columns: predicted class
    if matrix:
        predicted = [sum(row[j] for row in matrix) for j in range(len(matrix[0]))]
        used = [j for j, n in enumerate(predicted) if n]
        if len(used) == 1 and len(class_names) > 1:
            return f"no better than chance: predicts {class_names[used[0]]!r} for every {split} image"
    return None


def _multilabel(ctx: Context, variant: Variant, cfg, names: list[str], split) -> dict:
    """Multi-label metrics of the deployed file (`task.metrics`): mean AUC as `auc` (the key tables and
    studies rank by), per-label AUC with intervals, AP, and sensitivity/specificity at per-label thresholds
    chosen on this file's validation probabilities (`evaluate.operating_point` gives the rule, else Youden)."""
    from medlite.evaluate.multilabel import choose_thresholds
    from medlite.task import task_of

    task = task_of(ctx.dataset)
    validation = ctx.dataset.splits.get("val")
    thresholds, val = None, {}
    if validation is not None and len(validation):
        val_probs = ctx.inference.probabilities(variant, "val")
        thresholds, _ = choose_thresholds(val_probs, validation.labels, names, cfg.operating_point)
        if cfg.split == "test":
            val_metrics = task.metrics(val_probs, validation.labels, names, split="val")
            val = {k: val_metrics[k] for k in task.headline}
    metrics = task.metrics(ctx.inference.probabilities(variant, cfg.split), split.labels, names, thresholds=thresholds,
                           bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=ctx.recipe.seed, split=cfg.split)
    return {"metrics": metrics, "val_metrics": val}


def evaluate_stage(ctx: Context, variant: Variant) -> Stage[Variant]:
    """Metrics on the evaluated split (with bootstrap intervals) and headline metrics on validation."""
    cfg = ctx.recipe.evaluate

    def compute() -> dict:
        from medlite.evaluate import HEADLINE
        from medlite.evaluate.metrics import classification_metrics

        names = list(ctx.dataset.class_names)
        split = ctx.dataset.splits[cfg.split]
        if ctx.dataset.multilabel:
            return _multilabel(ctx, variant, cfg, names, split)
        metrics = classification_metrics(ctx.inference.probabilities(variant, cfg.split), split.labels, names,
                                         bootstrap=cfg.bootstrap, confidence=cfg.confidence, ece_bins=cfg.ece_bins,
                                         seed=ctx.recipe.seed)
        # Validation metrics (no bootstrap): what model selection (studies, tune, predict) may look at.
        val = {}
        validation = ctx.dataset.splits.get("val")
        if cfg.split == "test" and validation is not None and len(validation):
            val_metrics = classification_metrics(ctx.inference.probabilities(variant, "val"), validation.labels, names,
                                                 ece_bins=cfg.ece_bins)
            val = {k: val_metrics[k] for k in HEADLINE}
        return {"metrics": metrics, "val_metrics": val}

    def emit(facts: dict) -> Variant:
        variant.metrics, variant.val_metrics = facts["metrics"], facts.get("val_metrics", {})
        reason = no_better_than_chance(variant.metrics, list(ctx.dataset.class_names), cfg.split, cfg.confidence)
        if reason:  # said wherever the variant is shown: the table, the report, the model card, predict, serve
            ctx.warn(variant, reason)
        return variant

    return Stage(name=f"{variant.name}.evaluate", kind="evaluate", inputs=[variant],
                 config=[cfg.model_dump(), ctx.dataset.fingerprint(), ctx.recipe.seed], compute=compute, emit=emit,
                 plan=lambda: variant)
