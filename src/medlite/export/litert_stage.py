"""The LiteRT export stages: every trained variant (a PyTorch checkpoint, no compression of its
own) becomes `<name>_tflite_fp32` (parent: the trained variant) and, from that file,
`<name>_tflite_int8_dynamic` / `<name>_tflite_int8_static` (parent: the fp32 file).

A converter that cannot handle an architecture records `{"name", "reason"}` in `ctx.skipped`
(results.json `skipped`, and the report) instead of stopping the run; a run that was asked for
LiteRT and got no LiteRT file at all stops with `ExportFailed` (exit 1) naming the reasons.
"""

from __future__ import annotations

from medlite.context import Context
from medlite.errors import ExportFailed
from medlite.export import registry
from medlite.runtime import artifact_bytes
from medlite.stage import Stage
from medlite.variant import Variant

RUNTIME = registry.get("litert").runtime

LITERT_SCHEMA = 2  # bump when the LiteRT conversion or quantization changes what it writes


class ConversionFailed(Exception):
    """The converter could not make this file: recorded under `skipped`, never a crash."""


def _sources(ctx: Context) -> list[Variant]:
    # Lineage as data: a model trained (or composed, an ensemble) in PyTorch, not made by compression,
    # and exported by the base format.
    base = registry.base_format().runtime
    return [v for v in list(ctx.variants.values()) if v.checkpoint and not v.compress and v.runtime == base]


def litert_stage(ctx: Context, source: Variant, mode: str, calibration: dict) -> Stage[Variant]:
    from medlite.export import litert

    cfg = ctx.recipe.export.litert
    spec = ctx.data_for(source).preprocess  # the file's own input size
    fp32_name = f"{source.name}_tflite_fp32"
    name = f"{source.name}_tflite_{mode}"
    path = ctx.run.models / f"{name}.tflite"
    fp32_path = ctx.run.models / f"{fp32_name}.tflite"
    parent = source.name if mode == "fp32" else fp32_name
    extra = cfg.calibration_images if mode == "int8_static" else None

    def lineage(**facts) -> Variant:
        return Variant(name=name, parent=parent, stage="export.litert", arch=source.arch, format=litert.FORMATS[mode],
                       runtime=RUNTIME, params=source.params, macs=source.macs, teachers=list(source.teachers),
                       **facts)

    def compute() -> dict:
        try:
            if mode == "fp32":
                check = litert.convert_fp32(ctx.models.load(source), spec, path, name)
            else:
                if not fp32_path.is_file():
                    raise RuntimeError(f"no fp32 LiteRT file for {source.name} to quantize")
                if mode == "int8_static" and spec.image_size not in calibration:
                    calibration[spec.image_size] = litert.calibration_inputs(ctx.data_for(source), cfg.calibration_images,
                                                                             ctx.recipe.seed)
                check = litert.quantize(fp32_path, mode, path, spec, name, calibration.get(spec.image_size))
        except Exception as err:  # noqa: BLE001 - a converter's failure is recorded, never a crash
            raise ConversionFailed(litert.one_line(err)) from err
        # The sidecar is rewritten with the card later.
        return lineage(file=ctx.run.rel(path), file_bytes=artifact_bytes(path, RUNTIME), export=check).to_record()

    def emit(facts: dict) -> Variant:
        variant = ctx.add(Variant.from_dict(facts))
        ctx.say(f"{name}: {variant.file_bytes / 1024:.0f} KiB")
        return variant

    # The fp32 file keys by its source's checkpoint; the int8 ones by the same (their fp32 file is
    # made from it in this run), with their calibration settings.
    config = [mode, spec.to_dict(), extra, ctx.dataset.fingerprint() if extra else None, ctx.recipe.seed]
    return Stage(name=f"{name}.export", kind="litert", schema=LITERT_SCHEMA, inputs=[source], config=config,
                 outputs=[path], compute=compute, emit=emit, plan=lambda: ctx.add(lineage(file=ctx.run.rel(path), planned=True)),
                 bucket="export_litert")


def export_trained(ctx: Context) -> None:
    from medlite.export import litert  # the converter's module (its heavy imports are inside its functions)

    modes = ["fp32"] + [m for m in ctx.recipe.export.litert.quantize if m != "fp32"]  # int8 files start from fp32
    calibration: dict = {}  # input size -> images, drawn once, shared by every int8_static file of that size
    made: list[str] = []
    skipped: dict[str, list[str]] = {}  # reason -> the variants it stopped
    sources = _sources(ctx)
    for source in sources:
        for mode in modes:
            name = f"{source.name}_tflite_{mode}"
            try:
                ctx.ledger.run_stage(litert_stage(ctx, source, mode, calibration))
            except ConversionFailed as failed:
                reason = str(failed)
                ctx.skipped.append({"name": name, "parent": source.name if mode == "fp32" else f"{source.name}_tflite_fp32",
                                    "format": litert.FORMATS[mode], "reason": reason})
                skipped.setdefault(reason, []).append(name)
                ctx.say(f"{name}: skipped ({reason})")
                if mode == "fp32":
                    break  # nothing to quantize
            else:
                made.append(name)
    if not made:
        # Asked for LiteRT and got none (issue 18: such a run exited 0 with every file "skipped"):
        # stop with the reason, before evaluating and reporting a run without what it was asked for.
        why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in skipped.items()) or "no trained variant to convert"
        raise ExportFailed(f"export.formats: litert made no LiteRT file ({why})")
