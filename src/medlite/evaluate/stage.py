"""The evaluate stage: metrics of a variant's deployable file, measured in its runtime."""

from __future__ import annotations

from medlite.context import Context
from medlite.stage import Stage
from medlite.variant import Variant


def evaluate_stage(ctx: Context, variant: Variant) -> Stage[Variant]:
    """Metrics on the evaluated split (with bootstrap intervals) and headline metrics on validation."""
    cfg = ctx.recipe.evaluate

    def compute() -> dict:
        from medlite.evaluate import HEADLINE
        from medlite.evaluate.metrics import classification_metrics

        names = list(ctx.dataset.class_names)
        split = ctx.dataset.splits[cfg.split]
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
        return variant

    return Stage(name=f"{variant.name}.evaluate", kind="evaluate", inputs=[variant],
                 config=[cfg.model_dump(), ctx.dataset.fingerprint(), ctx.recipe.seed], compute=compute, emit=emit,
                 plan=lambda: variant)
