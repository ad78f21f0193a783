"""Float16 post-training quantization of an exported ONNX file (onnxconverter-common's `float16`).

Weights and activations inside the graph become float16; the file's input and output stay float32
(`keep_io_types=True`), so every consumer (evaluation, predict, serve, the edge runner) feeds and
reads it exactly as the fp32 file. About half the bytes of the fp32 file.

What it costs at run time depends on the CPU: ONNX Runtime's CPU provider has few fp16 kernels on
x86 CPUs without native fp16 arithmetic, so it inserts Cast nodes around the ops it runs in float32
and the file is often *slower* than the fp32 one there. The bench measures it; nothing here
assumes it is faster.

The converter is an optional package (`pip install medlite[fp16]`): asked for without it, the run
stops before training with one line naming it (`missing_packages`, checked by the pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path

from medlite.errors import InternalError, UsageError

FORMAT = "onnx-fp16"
PACKAGE = "onnxconverter-common"
INSTALL_HINT = "pip install 'medlite[fp16]', i.e. pip install onnxconverter-common==1.16.0"
FP16_KEY = "medlite.quantization"  # the same key as the int8 files' facts: one place to look


def missing_packages() -> list[str]:
    """['onnxconverter-common'] when the converter cannot be imported here, else []."""
    try:
        from onnxconverter_common import float16  # noqa: F401
    except ImportError:
        return [PACKAGE]
    return []


def convert_fp16(onnx_in: str | Path, onnx_out: str | Path) -> dict:
    """Write a float16 copy of an fp32 medlite ONNX file (float32 input and output), atomically.

    Returns facts: format, converter, the dtype counts of the initializers, cast nodes inserted,
    file_bytes and parent_bytes. The file must load and run in ONNX Runtime's CPU provider (checked).
    """
    import numpy as np
    import onnx

    from medlite.compress.quantize import _input_shape, _one_line, _shorten_names
    from medlite.export.onnx import artifact_bytes, run_onnx, save_onnx

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not onnx_in.is_file():
        raise UsageError(f"{onnx_in}: ONNX file not found")
    if missing_packages():
        raise UsageError(f"fp16: needs {PACKAGE}, not installed ({INSTALL_HINT})")
    from onnxconverter_common import float16

    shape = _input_shape(onnx_in)  # a readable model with an input, or a UsageError naming the file
    model = onnx.load(str(onnx_in))
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as err:  # noqa: BLE001 - the input was checked: the converter failing is not the user's fault
        raise InternalError(f"{onnx_in}: cannot convert to float16: {_one_line(err)}") from err
    _shorten_names(converted)  # the exporter's long tensor paths, repeated by the inserted casts
    dtypes: dict[str, int] = {}
    for tensor in converted.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        dtypes[name] = dtypes.get(name, 0) + 1
    facts = {
        "format": FORMAT,
        "method": "fp16",
        "converter": f"onnxconverter-common {_version()} float16.convert_float_to_float16(keep_io_types=True)",
        "initializer_dtypes": dtypes,
        "cast_nodes": sum(n.op_type == "Cast" for n in converted.graph.node) - casts_before,
        "io_types": "float32",
    }
    existing = {p.key: p for p in converted.metadata_props}
    for key, value in {**{p.key: p.value for p in model.metadata_props}, FP16_KEY: json.dumps(facts, sort_keys=True)}.items():
        prop = existing.get(key) or converted.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(converted)
    save_onnx(converted, onnx_out)  # temp name + os.replace
    sample_shape = [2] + [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
    try:
        run_onnx(onnx_out, np.random.default_rng(0).standard_normal(sample_shape).astype(np.float32))
    except Exception as err:  # noqa: BLE001 - the deliverable is a file ORT runs
        onnx_out.unlink(missing_ok=True)
        raise InternalError(f"{onnx_out}: the float16 file does not run in ONNX Runtime: {_one_line(err)}") from err
    return {**facts, "file_bytes": artifact_bytes(onnx_out), "parent_bytes": artifact_bytes(onnx_in)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"
