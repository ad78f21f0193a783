"""Pipeline stages for deployment formats beyond ONNX (called from pipeline.py in one line each).

`stage_litert_exports` turns every trained variant (one with a PyTorch checkpoint and no
compression of its own) into LiteRT variants: `<name>_tflite_fp32` (parent: the trained
variant) and `<name>_tflite_int8_dynamic` / `<name>_tflite_int8_static` (parent: the fp32 file).
A converter that cannot handle an architecture records `{"name", "reason"}` in `ctx.skipped`
(results.json `skipped`, and the report) instead of stopping the run.
"""

from __future__ import annotations

from medlite.errors import UsageError
from medlite.variant import Context, Variant, stage_key

LITERT_SCHEMA = 1  # bump when the LiteRT conversion or quantization changes what it writes


def check_export_formats(recipe) -> None:
    """Fail before any training when a requested format's packages are missing (no silent skip)."""
    if "litert" in recipe.export.formats:
        from medlite.export.litert import INSTALL_HINT, missing_packages

        missing = missing_packages()
        if missing:
            raise UsageError(f"export.formats: litert needs {', '.join(missing)}, not installed ({INSTALL_HINT})")


def _sources(ctx: Context) -> list[Variant]:
    # Lineage as data: a trained variant has its own checkpoint and was not made by compression.
    return [v for v in list(ctx.variants.values()) if v.checkpoint and not v.compress and v.runtime == "onnxruntime"]


def stage_litert_exports(ctx: Context) -> list[Variant]:
    if "litert" not in ctx.recipe.export.formats:
        return []
    from medlite.export import litert

    cfg = ctx.recipe.export.litert
    spec = ctx.dataset.preprocess
    made: list[Variant] = []
    calibration = None
    for source in _sources(ctx):
        fp32_name = f"{source.name}_tflite_fp32"
        parent_for = {"fp32": source.name, "int8_dynamic": fp32_name, "int8_static": fp32_name}
        modes = ["fp32"] + [m for m in cfg.quantize if m != "fp32"]  # int8 files start from the fp32 one
        fp32_path = ctx.run.models / f"{fp32_name}.tflite"
        for mode in modes:
            name = f"{source.name}_tflite_{mode}"
            path = ctx.run.models / f"{name}.tflite"
            extra = cfg.calibration_images if mode == "int8_static" else None
            key = stage_key("litert", mode, ctx.artifact_hash(source), spec.to_dict(), extra,
                            ctx.dataset.fingerprint() if extra else None, ctx.recipe.seed, schema=LITERT_SCHEMA)
            stage = f"{name}.export"
            facts = ctx.reuse(stage, key)
            if facts is None:
                try:
                    with ctx.timed("export_litert"):
                        if mode == "fp32":
                            check = litert.convert_fp32(ctx.load_variant_model(source), spec, path, name)
                        else:
                            if not fp32_path.is_file():
                                raise RuntimeError(f"no fp32 LiteRT file for {source.name} to quantize")
                            if mode == "int8_static" and calibration is None:
                                calibration = litert.calibration_inputs(ctx.dataset, cfg.calibration_images, ctx.recipe.seed)
                            check = litert.quantize(fp32_path, mode, path, spec, name,
                                                    calibration if mode == "int8_static" else None)
                except Exception as err:  # noqa: BLE001 - a converter's failure is recorded, never a crash
                    reason = litert.one_line(err)
                    ctx.skipped.append({"name": name, "parent": parent_for[mode], "format": litert.FORMATS[mode],
                                        "reason": reason})
                    ctx.say(f"{name}: skipped ({reason})")
                    if mode == "fp32":
                        break  # nothing to quantize
                    continue
                from medlite.runtime.litert import LiteRTArtifact

                art = LiteRTArtifact(path, threads=1)
                facts = {"file": ctx.run.rel(path), "file_bytes": art.file_bytes(), "export": check}
                ctx.store(stage, key, [path], facts)  # the sidecar is rewritten with the card later
            variant = Variant(
                name=name, parent=parent_for[mode], stage="export.litert", arch=source.arch,
                format=litert.FORMATS[mode], runtime="litert", params=source.params, macs=source.macs,
                teachers=list(source.teachers), **facts,
            )
            made.append(ctx.add(variant))
            ctx.say(f"{name}: {variant.file_bytes / 1024:.0f} KiB")
    return made
