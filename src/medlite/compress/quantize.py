"""Post-training int8 quantization of an exported ONNX file with ONNX Runtime's quantizer.

Both functions read an fp32 medlite ONNX file and write an int8 one that ONNX Runtime's CPU
execution provider runs, keeping the file's metadata (`medlite.preprocess` above all: the
quantizer may drop metadata_props, and the edge runner needs it). Files are written
atomically. A bad input (no file, an unreadable model, bad calibration images) is a one-line
UsageError (exit 2); ONNX Runtime failing on a valid model is an InternalError (exit 1: not the
user's to fix; `--debug` shows ORT's traceback).

The int8 scheme (shared with `medlite.compress.qat`, which must train for exactly this):
- weights: int8, symmetric (zero point 0, range [-127, 127]), per output channel;
- activations: uint8, asymmetric (per tensor, range [0, 255]), calibrated on real images.
This is ORT's recommendation for x86-64 CPUs (U8S8: uint8 activations x int8 weights, the
operand order of the VPMADDUBSW / VNNI VPDPBUSD instructions), and ARM's kernels run it too.
`reduce_range=True` (7-bit weights) is only worth its accuracy cost on x86 CPUs *without*
VNNI, where U8S8 products can saturate 16-bit intermediate sums.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np

from medlite.errors import InternalError, MedliteError, UsageError

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FORMAT_STATIC = "onnx-int8-qdq"
FORMAT_DYNAMIC = "onnx-int8-dynamic"
QUANT_KEY = "medlite.quantization"

# The scheme above, as numbers (qat.py fake-quantizes with the same ranges).
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACT_QMIN, ACT_QMAX = 0, 255


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def _check_input(onnx_in: Path) -> None:
    if not onnx_in.is_file():
        raise UsageError(f"{onnx_in}: ONNX file not found")


def _preprocess(onnx_in: Path, work: Path) -> tuple[Path, str]:
    """ORT's `quant_pre_process` (shape inference + graph optimisation, e.g. Conv+BN folding).

    Folding before quantizing matters: a BN after an int8 Conv would be a float op fed by a
    dequantized tensor, and its scale would be applied after the rounding rather than before.
    A model the pre-processor cannot handle is still quantized, just without it.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(onnx_in), str(out), skip_symbolic_shape=False)
        return out, "ok"
    except Exception as err:  # noqa: BLE001 - the unprocessed model is still quantizable
        return onnx_in, f"skipped ({_one_line(err)})"


def _fold_warnings(pre: str, counts: Counter) -> list[str]:
    """What the pre-processing did not do, in words (kept on the variant, never silent)."""
    warnings = []
    if pre != "ok":
        warnings.append(f"ONNX Runtime pre-processing (BatchNorm folding, shape inference) failed, quantized without it: {pre}")
    if counts.get("BatchNormalization", 0):
        warnings.append(
            f"{counts['BatchNormalization']} BatchNormalization node(s) not folded into a convolution: "
            "they run in float between int8 ops"
        )
    return warnings


def _drop_zero_weight_zero_points(model) -> int:
    """Remove all-zero zero points of *constant* int8/int32 tensors (weights, biases); return bytes saved.

    Symmetric weights and int32 biases always have zero point 0, which is DequantizeLinear's
    default, yet ORT writes one per output channel (an int32 per channel for biases). For a
    small depthwise-separable student these zeros are ~5% of the file. Only DQ nodes that feed
    Conv alone are trimmed: ORT 1.32's CPU provider still fuses DQ -> Conv -> Q into
    QLinearConv without them, but its QGemm fusion requires the zero point (checked).
    Activation zero points are never touched.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses: Counter = Counter(i for n in model.graph.node for i in n.input)
    consumers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    saved = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[0] not in inits:
            continue
        if consumers.get(node.output[0], set()) != {"Conv"}:
            continue
        zp_name = node.input[2]
        zp = inits.get(zp_name)
        if zp is None or numpy_helper.to_array(zp).any():
            continue
        del node.input[2]
        uses[zp_name] -= 1
        if uses[zp_name] == 0:
            saved += len(zp.SerializeToString())
            model.graph.initializer.remove(zp)
            del inits[zp_name]
    return saved


def _shorten_names(model) -> None:
    """Give internal tensors and nodes short names (the exporter's paths are ~80 bytes each and
    appear several times per node in a QDQ graph). Graph inputs and outputs keep their names."""
    keep = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names)}"
        return names[name]

    for tensor in model.graph.initializer:
        tensor.name = short(tensor.name)
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
        for i, name in enumerate(node.input):
            node.input[i] = short(name)
        for i, name in enumerate(node.output):
            node.output[i] = short(name)
    for info in model.graph.value_info:
        info.name = short(info.name)


def compact(model) -> None:
    """Lossless size trims for an int8 graph; the numbers it computes do not change."""
    _drop_zero_weight_zero_points(model)
    _shorten_names(model)


def _finish(parent: Path, quantized: Path, onnx_out: Path, facts: dict) -> None:
    """Compact, re-add the parent's metadata (and our quantization facts), move into place atomically."""
    import onnx

    from medlite.export.onnx import save_onnx

    source = onnx.load(str(parent), load_external_data=False)
    model = onnx.load(str(quantized))
    compact(model)
    onnx.checker.check_model(model)
    existing = {p.key: p for p in model.metadata_props}
    entries = {p.key: p.value for p in source.metadata_props}
    entries[QUANT_KEY] = json.dumps(facts, sort_keys=True)
    for key, value in entries.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value
    save_onnx(model, onnx_out)  # temp name + os.replace


def _input_shape(path: Path) -> list[int | str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's errors are not for users
        raise UsageError(f"{path}: cannot quantize: not a readable ONNX model ({_one_line(err)})") from None
    if not model.graph.input:
        raise UsageError(f"{path}: cannot quantize: the model has no input")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def _smoke_run(path: Path, sample: np.ndarray) -> None:
    """The file must load and run in the CPU execution provider: that is the deliverable."""
    from medlite.export.onnx import run_onnx

    run_onnx(path, sample.astype(np.float32, copy=False))


def _op_counts(path: Path) -> Counter:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def _qdq_quantized_ops(path: Path) -> int:
    """Compute nodes (not Q/DQ themselves) that read at least one dequantized tensor."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dequantized for i in n.input)
    )


def _work_dir(onnx_out: Path) -> tempfile.TemporaryDirectory:
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".medlite-quant-", dir=onnx_out.parent)


# -- dynamic ------------------------------------------------------------------------------


DYNAMIC_OPS = ["Conv", "MatMul", "Gemm"]


def quantize_dynamic(onnx_in: str | Path, onnx_out: str | Path, per_channel: bool = True) -> dict:
    """Weight-only int8 (the analogue of TFLite's `Optimize.DEFAULT`): no calibration data needed.

    What gets quantized: the weights of Conv, MatMul and Gemm become int8 initializers (per
    output channel); at run time each activation is quantized on the fly
    (DynamicQuantizeLinear) and the ops run as ConvInteger / MatMulInteger. ORT 1.32's CPU
    provider runs ConvInteger with int8 weights; should a model's ConvInteger not load or run,
    the convolutions are left in float and only MatMul/Gemm are quantized: then the facts say
    `dense_only: true` with a warning (the pipeline names such a variant `..._int8_dynamic_dense`),
    and `quantized_ops` / `float_ops` count what was and was not quantized. Everything else
    (BN, pooling, adds) stays float.
    Smaller file, no calibration; usually slower than static QDQ on CPU for CNNs.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    _check_input(onnx_in)
    shape = _input_shape(onnx_in)
    sample_shape = [2] + [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
    sample = np.random.default_rng(0).standard_normal(sample_shape)
    with _work_dir(onnx_out) as tmp:
        work = Path(tmp)
        source, pre = _preprocess(onnx_in, work)
        quantized = work / "quantized.onnx"
        last_error: BaseException | None = None
        for op_types in (DYNAMIC_OPS, ["MatMul", "Gemm"]):
            try:
                ort_quantize_dynamic(
                    str(source),
                    str(quantized),
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                    op_types_to_quantize=op_types,
                )
                _smoke_run(quantized, sample)
                break
            except Exception as err:  # noqa: BLE001 - fall back, then report one line
                last_error = err
        else:
            # The input was checked above: ORT failing on it is an internal failure, not the user's.
            raise InternalError(f"{onnx_in}: cannot quantize (dynamic int8): {_one_line(last_error)}") from last_error
        counts = _op_counts(quantized)
        quantized_ops = {op: counts[op] for op in ("ConvInteger", "MatMulInteger") if counts.get(op)}
        float_ops = {op: counts[op] for op in DYNAMIC_OPS if counts.get(op)}
        warnings = _fold_warnings(pre, counts)
        # "Dynamic int8" of a conv net whose convolutions stayed float is not what the name says.
        dense_only = bool(float_ops.get("Conv")) and not quantized_ops.get("ConvInteger")
        if dense_only:
            why = f" (ConvInteger failed: {_one_line(last_error)})" if last_error is not None else ""
            warnings.append(
                f"only the dense layers are int8: {float_ops['Conv']} Conv node(s) stay float{why}"
            )
        elif float_ops:
            warnings.append(f"some quantizable nodes stay float: {float_ops}")
        facts = {
            "format": FORMAT_DYNAMIC,
            "op_types": op_types,
            "quantized_nodes": counts.get("ConvInteger", 0) + counts.get("MatMulInteger", 0),
            "quantized_ops": quantized_ops,
            "float_ops": float_ops,
            "dense_only": dense_only,
            "weight_type": "int8",
            "per_channel": per_channel,
            "preprocess": pre,
            "warnings": warnings,
        }
        _finish(onnx_in, quantized, onnx_out, facts)
    from medlite.export.onnx import artifact_bytes

    return {**facts, "file_bytes": artifact_bytes(onnx_out), "parent_bytes": artifact_bytes(onnx_in)}


# -- static -------------------------------------------------------------------------------


class ArrayCalibrationReader:
    """ORT CalibrationDataReader over an in-memory float32 NCHW array, in small batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.images):
            return None
        batch = self.images[self._start : self._start + self.batch_size]
        self._start += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._start = 0


def check_calibration(calibration: np.ndarray | None, shape: list[int | str] | None = None) -> np.ndarray:
    """Validate calibration images at the boundary: missing, empty or mis-shaped is a usage error."""
    if calibration is None:
        raise UsageError("calibration: no calibration images given (static int8 needs real, normalised images)")
    array = np.asarray(calibration)
    if array.size == 0 or len(array) == 0:
        raise UsageError("calibration: the calibration set is empty (static int8 needs real, normalised images)")
    if array.ndim != 4:
        raise UsageError(f"calibration: expected float32 N x C x H x W images, got shape {tuple(array.shape)}")
    if shape is not None:
        for got, want in zip(array.shape[1:], shape[1:]):
            if isinstance(want, int) and want > 0 and got != want:
                raise UsageError(
                    f"calibration: images are {tuple(array.shape[1:])} but the model expects "
                    f"{tuple(shape[1:])} (C x H x W)"
                )
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"calibration: expected normalised float32 images, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise UsageError("calibration: the images contain NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def quantize_static(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calibration: np.ndarray | None,
    method: CalibrationMethodName = "minmax",
    per_channel: bool = True,
    percentile: float = 99.999,
    reduce_range: bool = False,
    tensor_overrides: dict | None = None,
) -> dict:
    """Full int8 (weights and activations) in QDQ format, calibrated on `calibration` images.

    `calibration` is float32 N x C x H x W, normalised exactly as the model's input (a few
    hundred training images are plenty). `method`: minmax (the observed range), entropy (KL
    divergence, clips outliers), percentile (clips at `percentile` of |x|). QDQ, not QOperator:
    ORT's CPU kernels fuse DequantizeLinear -> op -> QuantizeLinear into int8 kernels, and the
    same file runs on every execution provider. `tensor_overrides` is passed to ORT as
    `TensorQuantOverrides` (e.g. ranges learned by QAT).

    Returns facts: format "onnx-int8-qdq", quantized_nodes (compute nodes fed by int8
    tensors), qdq_nodes, types, method, file_bytes and parent_bytes.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if not 90.0 < percentile <= 100.0:
        raise UsageError(f"percentile must be in (90, 100], got {percentile!r}")
    _check_input(onnx_in)
    shape = _input_shape(onnx_in)
    images = check_calibration(calibration, shape)
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    extra: dict = {"CalibTensorRangeSymmetric": False}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    if tensor_overrides:
        extra["TensorQuantOverrides"] = tensor_overrides
    with _work_dir(onnx_out) as tmp:
        work = Path(tmp)
        source, pre = _preprocess(onnx_in, work)
        quantized = work / "quantized.onnx"
        try:
            from medlite.export.onnx import INPUT_NAME

            ort_quantize_static(
                str(source),
                str(quantized),
                ArrayCalibrationReader(images, INPUT_NAME),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate_method,
                extra_options=extra,
            )
            _smoke_run(quantized, images[:2])
        except MedliteError:
            raise
        except Exception as err:  # noqa: BLE001 - any ORT failure: one line, the traceback under --debug
            # Inputs and calibration images were checked above: ORT failing on them is internal, not the user's.
            raise InternalError(f"{onnx_in}: cannot quantize (static int8, {method}): {_one_line(err)}") from err
        counts = _op_counts(quantized)
        facts = {
            "warnings": _fold_warnings(pre, counts),
            "format": FORMAT_STATIC,
            "quantized_nodes": _qdq_quantized_ops(quantized),
            "qdq_nodes": counts.get("QuantizeLinear", 0) + counts.get("DequantizeLinear", 0),
            "activation_type": "uint8",
            "weight_type": "int8",
            "per_channel": per_channel,
            "reduce_range": reduce_range,
            "method": method,
            "calibration_images": int(len(images)),
            "preprocess": pre,
        }
        if method == "percentile":
            facts["percentile"] = float(percentile)
        _finish(onnx_in, quantized, onnx_out, facts)
    from medlite.export.onnx import artifact_bytes

    return {**facts, "file_bytes": artifact_bytes(onnx_out), "parent_bytes": artifact_bytes(onnx_in)}
