"""The ONNX export stage: every trained variant (a PyTorch checkpoint) becomes its `.onnx` file,
checked against PyTorch on an example input. The base format of the export registry."""

from __future__ import annotations

from medlite.context import Context
from medlite.stage import Stage
from medlite.variant import Variant


def export_stage(ctx: Context, variant: Variant) -> Stage[Variant]:
    """Export one trained variant to ONNX; the facts (file, size, MACs, the check) go onto it."""
    path = ctx.run.models / f"{variant.name}.onnx"

    def compute() -> dict:
        from medlite.export.onnx import export_onnx
        from medlite.models.complexity import describe_model

        model = ctx.models.load(variant)
        spec = ctx.data_for(variant).preprocess  # at the variant's own input size
        check = export_onnx(model, spec, path, {"medlite.variant": variant.name})
        return {"file": ctx.run.rel(path), "export": {"max_abs_diff": check["max_abs_diff"]},
                **describe_model(model, ctx.models.example_input(variant), path)}

    def emit(facts: dict) -> Variant:
        for key, value in facts.items():
            if not hasattr(variant, key):
                raise KeyError(f"export facts: {key!r} is not a Variant field")
            setattr(variant, key, value)
        return variant

    def plan() -> Variant:
        variant.file, variant.planned = ctx.run.rel(path), True
        return variant

    return Stage(name=f"{variant.name}.export", kind="export", inputs=[variant],
                 config=ctx.data_for(variant).preprocess.to_dict(), outputs=[path], compute=compute, emit=emit, plan=plan)


def export_trained(ctx: Context) -> None:
    """Every trained variant made so far, to ONNX."""
    for variant in list(ctx.variants.values()):
        if variant.checkpoint and not variant.file:
            ctx.ledger.run_stage(export_stage(ctx, variant))
