"""A per-layer view of one deployed file (ONNX or LiteRT): what each layer stores, costs and runs as.

For every layer (a node of the file) and every operator type: the count, parameter bytes (the
constant tensors it reads; an int8/fp16 weight's DequantizeLinear/DEQUANTIZE is folded into the
layer that uses it, so its bytes are that layer's), MACs per image where the shapes give them
(Conv, depthwise Conv, Gemm/MatMul, their integer forms; LiteRT CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED), the precision it runs in, and its share of the latency.

- Precision: `int8` (an integer kernel: QLinear*/ConvInteger/MatMulInteger/QGemm, or in a QDQ file
  a compute node fed by DequantizeLinear), `fp16` (its float tensors are float16 in the file),
  `fp32`, or `convert` (Quantize/Dequantize/Cast: moving between precisions). For ONNX files the
  profiler's executed kernel decides: a QDQ conv that ONNX Runtime did not fuse into an integer
  kernel ran in float, and is reported so (`runs` says which kernel ran).
- Latency: ONNX Runtime's profiler (`SessionOptions.enable_profiling`), the node events of the
  timed runs parsed from its JSON. ONNX Runtime times the kernels of its *optimized* graph: a fused
  kernel (Conv+Relu -> FusedConv, DQ+Conv+Q -> QLinearConv) is attributed to the compute node it
  fuses; kernels it inserted itself (layout reorders, fp16 casts) have no layer in the file and are
  their own rows (`inserted`). Shares are of the summed kernel time, so they add to 1.
  The LiteRT Python interpreter exposes no per-op profiler: its latency shares are "not available"
  (`latency.available: false`, with the reason), never estimated.

Numbers from `layer_view(path)`; `print_layers` writes them readable at 80 columns. Used by
`medlite bench FILE --layers`, the bench stage (`layers/<variant>.json`) and the report.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medlite.errors import UsageError

# ONNX operators that compute in integers (ONNX standard and ONNX Runtime's com.microsoft ones).
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "QAttention", "NhwcQLinearConv",
})
CONVERT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast",
                         "QUANTIZE", "DEQUANTIZE", "CAST"})
# Elementwise nodes ONNX Runtime folds into the compute node before them (its fused kernel carries
# the last node's name): their kernel time belongs to that compute node.
_FUSABLE = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Add", "Mul",
                      "BatchNormalization", "QuantizeLinear", "DequantizeLinear"})
_MAC_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"})
LAYERS_SCHEMA = 1
RECAST_PREFIX = "InsertedPrecisionFreeCast_"
PROFILE_RUNS = 20


def layer_view(path: str | Path, runtime: str | None = None, *, profile: bool = True, runs: int = PROFILE_RUNS,
               threads: int = 1, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The per-layer and per-operator-type view of one ONNX (.onnx) or LiteRT (.tflite) file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: model file not found")
    if runtime is None:
        from medlite.runtime import runtime_for

        runtime = runtime_for(path)
    if runtime == "onnxruntime":
        view = _onnx_view(path, profile=profile, runs=runs, threads=threads, input_shape=input_shape)
    elif runtime == "litert":
        view = _litert_view(path)
    else:
        raise UsageError(f"{path}: no per-layer view for runtime {runtime!r} (ONNX and LiteRT files only)")
    view["ops"] = summarize_ops(view["layers"], view.get("inserted") or [], view["latency"].get("available", False))
    view["totals"] = _totals(view)
    return {"file": path.name, "runtime": runtime, "schema": LAYERS_SCHEMA, **view}


# -- ONNX -----------------------------------------------------------------------------------


def _dims(value_info) -> list[int] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    # A symbolic or unknown dimension is the batch: counted as 1 (MACs are per image).
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]


def _onnx_view(path: Path, *, profile: bool, runs: int, threads: int, input_shape) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf's errors are not for users
        raise UsageError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes, MACs are unknown (None), never guessed
        inferred = model
    graph = inferred.graph
    shapes: dict[str, list[int] | None] = {}
    elem: dict[str, int] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        shapes[info.name] = _dims(info)
        elem[info.name] = info.type.tensor_type.elem_type
    inits = {t.name: t for t in graph.initializer}
    arrays = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    for name, a in arrays.items():
        shapes[name], elem[name] = list(a.shape), inits[name].data_type
    producer = {o: n for n in graph.node for o in n.output}
    # Constant-producing nodes whose result is a weight: DequantizeLinear / Cast / Identity (the
    # exporter's shared weights) of an initializer, and Constant nodes. Folded into the layers that read them.
    folded: dict[str, tuple[str, int, int, str]] = {}  # tensor -> (node name, bytes, elements, stored dtype)
    for n in graph.node:
        if n.op_type == "Constant":
            value = next((numpy_helper.to_array(a.t) for a in n.attribute if a.name == "value"), None)
            if value is not None:
                folded[n.output[0]] = (n.name, int(value.nbytes), int(value.size), value.dtype.name)
                shapes[n.output[0]] = list(value.shape)
        elif n.op_type in ("DequantizeLinear", "Cast", "Identity") and n.input and n.input[0] in inits:
            stored = arrays[n.input[0]]
            nbytes = sum(int(arrays[i].nbytes) for i in n.input if i in arrays)
            folded[n.output[0]] = (n.name, nbytes, int(stored.size), stored.dtype.name)
    folded_nodes = {v[0] for v in folded.values()}
    layers = []
    for index, n in enumerate(graph.node):
        name = n.name or f"{n.op_type}_{index}"
        if name in folded_nodes:
            continue
        param_bytes = params = 0
        stored: set[str] = set()
        for i in n.input:
            if i in arrays and arrays[i].dtype != np.int64:  # int64 initializers are shapes and axes
                param_bytes += int(arrays[i].nbytes)
                params += int(arrays[i].size)
                stored.add(arrays[i].dtype.name)
            elif i in folded:
                param_bytes += folded[i][1]
                params += folded[i][2]
                stored.add(folded[i][3])
        kind, macs = _onnx_macs(n, shapes)
        layers.append({
            "name": name, "op": n.op_type, "kind": kind, "params": params, "param_bytes": param_bytes, "macs": macs,
            "precision": _onnx_precision(n, producer, elem, stored), "stored": sorted(stored) or None,
        })
    latency: dict[str, Any] = {"available": False, "reason": "profiling not asked for"}
    inserted: list[dict] = []
    if profile:
        events = _ort_profile(path, runs=runs, threads=threads, input_shape=input_shape)
        latency, inserted = _attribute(events, layers, graph, runs, threads)
    else:
        for layer in layers:
            layer["runs"], layer["ms"], layer["share"] = None, None, None
    return {"layers": layers, "inserted": inserted, "latency": latency}


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _onnx_macs(node, shapes) -> tuple[str | None, int | None]:
    """(kind, MACs per image) of a node, from the (inferred) shapes; (None, None) for the rest."""
    op = node.op_type
    out = shapes.get(node.output[0]) if node.output else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        weight = shapes.get(node.input[3 if op == "QLinearConv" else 1])
        if not weight or not out:
            return "conv", None
        group = int(_attr(node, "group", 1))
        x = shapes.get(node.input[0])
        in_channels = x[1] if x and len(x) > 1 else weight[1] * group
        kind = "depthwise" if group > 1 and group == in_channels and weight[1] == 1 else ("grouped" if group > 1 else "conv")
        # Each output element is a dot product over (in_channels / group) x kernel: weight dims 1..
        return kind, int(np.prod(out[1:], dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"):
        a = shapes.get(node.input[0])
        if not a or not out:
            return "dense", None
        k = a[0] if op == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return "dense", int(np.prod(out[1:], dtype=np.int64) * k)
    return None, None


def _onnx_precision(node, producer, elem, stored: set[str]) -> str:
    """What the file says this node computes in (the profiler may correct it, see `_attribute`)."""
    op = node.op_type
    if op in CONVERT_OPS:
        return "convert"
    if op in INTEGER_OPS:
        return "int8"
    fed_by_dq = any(i in producer and producer[i].op_type == "DequantizeLinear" for i in node.input)
    if fed_by_dq and op not in ("Reshape", "Flatten", "Identity", "Shape", "Squeeze", "Unsqueeze", "Transpose"):
        return "int8"  # QDQ: ONNX Runtime runs DQ -> op -> Q as an integer kernel where it has one
    if "float16" in stored or any(elem.get(i) == 10 for i in node.input):  # 10: TensorProto.FLOAT16
        return "fp16"
    return "fp32"


def _ort_profile(path: Path, *, runs: int, threads: int, input_shape) -> list[dict]:
    """Node events of `runs` batch-1 runs (after one untimed warm-up run) from ONNX Runtime's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="medlite-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # as the bench's sessions (medlite.runtime.onnxrt)
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises several private exception types
            raise UsageError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0][:200]})") from None
        inp = session.get_inputs()[0]
        shape = list(input_shape) if input_shape else [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        shape[0] = 1
        dtype = np.float16 if "float16" in inp.type else np.float32
        x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        session.run(None, {inp.name: x})  # warm-up: first-run allocations are not the layers' time
        session.run(None, {inp.name: x})
        marker = None
        events = []
        for _ in range(max(1, runs)):
            session.run(None, {inp.name: x})
        profile_file = session.end_profiling()
        data = json.loads(Path(profile_file).read_text())
    # Drop the two warm-up runs: model_run events mark run boundaries.
    run_starts = sorted(e["ts"] for e in data if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(run_starts) > 2:
        marker = run_starts[2]
    for e in data:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            if marker is None or e["ts"] >= marker:
                events.append({"name": e["name"][: -len("_kernel_time")], "op": (e.get("args") or {}).get("op_name"),
                               "us": float(e.get("dur", 0))})
    return events


def _attribute(events: list[dict], layers: list[dict], graph, runs: int, threads: int) -> tuple[dict, list[dict]]:
    """Give each executed kernel's time to the file layer it computes; the rest are `inserted` rows.

    A kernel's time is its median over the runs, not the sum: on a shared machine one preempted run
    would otherwise hand a single layer half of the total.
    """
    by_name = {layer["name"]: layer for layer in layers}
    node_of = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    durations: dict[str, list[float]] = {}
    op_of: dict[str, str | None] = {}
    for e in events:
        durations.setdefault(e["name"], []).append(e["us"])
        op_of[e["name"]] = e["op"]
    kernels = {name: float(np.median(d)) for name, d in durations.items()}
    total = sum(kernels.values()) or 1.0
    time_of: dict[str, float] = {}
    runs_as: dict[str, set[str]] = {}
    inserted: list[dict] = []
    names_by_length = sorted(by_name, key=len, reverse=True)
    cast_to_float: set[str] = set()
    for kernel, us in kernels.items():
        # ONNX Runtime names a kernel it moved to float32 after its own fp16 -> fp32 cast after that
        # cast: "InsertedPrecisionFreeCast_<tensor>[_nchwc]". The layer then ran in float32.
        recast = kernel.startswith(RECAST_PREFIX)
        name = kernel[len(RECAST_PREFIX):] if recast else kernel
        target = _match(name, by_name, names_by_length, producer)
        if target is not None:
            target = _fused_owner(node_of.get(target), producer, by_name) or target
        op = op_of[kernel] or "?"
        if target is None:
            inserted.append({"name": kernel, "op": op, "ms": round(us / 1000, 5), "share": round(us / total, 5),
                             "precision": "convert" if op in CONVERT_OPS else ("int8" if op in INTEGER_OPS else "fp32")})
            continue
        time_of[target] = time_of.get(target, 0.0) + us
        runs_as.setdefault(target, set()).add(op)
        if recast and op not in CONVERT_OPS:
            cast_to_float.add(target)
    for layer in layers:
        executed = runs_as.get(layer["name"])
        layer["runs"] = sorted(executed) if executed else None
        us = time_of.get(layer["name"])
        layer["ms"] = round(us / 1000, 5) if us is not None else None
        layer["share"] = round(us / total, 5) if us is not None else 0.0
        if executed and layer["precision"] == "int8" and layer["op"] not in INTEGER_OPS \
                and not executed & INTEGER_OPS:
            layer["precision"] = "fp32"  # the QDQ pattern was not fused: it ran dequantized, in float
        if layer["name"] in cast_to_float and layer["precision"] == "fp16":
            layer["precision"] = "fp32"
            layer["note"] = "float16 in the file; ONNX Runtime ran it in float32 after a cast it inserted"
    latency = {"available": True,
               "source": f"onnxruntime profiler, median of {runs} runs at batch 1, {threads} thread(s)",
               "kernel_ms": round(total / 1000, 5), "inserted_share": round(sum(r["share"] for r in inserted), 5)}
    return latency, inserted


def _match(executed: str, by_name: dict, names_by_length: list[str], out_to_node: dict) -> str | None:
    if executed in by_name:
        return executed
    for name in names_by_length:  # QDQ fusions keep the target's name: n30 -> n30_token_1
        if executed.startswith(name + "_"):
            return name
    for suffix in ("_nchwc", ""):  # layout-transformed kernels are named after the tensor they write
        tensor = executed[: -len(suffix)] if suffix and executed.endswith(suffix) else executed
        node = out_to_node.get(tensor)
        if node is not None and (node.name in by_name):
            return node.name
    return None


def _fused_owner(node, producer: dict, by_name: dict) -> str | None:
    """The compute node a fused elementwise tail (Relu, Clip, Q ...) belongs to, walking back."""
    seen = 0
    while node is not None and node.op_type in _FUSABLE and seen < 4:
        source = next((producer[i] for i in node.input if i in producer and producer[i].name in by_name), None)
        if source is None:
            return None
        if source.op_type in _MAC_OPS:
            return source.name
        node, seen = source, seen + 1
    return None


# -- LiteRT ----------------------------------------------------------------------------------


def _litert_view(path: Path) -> dict[str, Any]:
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        from medlite.export.litert import INSTALL_HINT

        raise UsageError(f"{path}: a per-layer view of a LiteRT file needs ai-edge-litert ({INSTALL_HINT})") from None
    try:
        # Without the default XNNPACK delegate: the file's own operators, not one DELEGATE node.
        interp = litert.Interpreter(model_path=str(path),
                                    experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
    except Exception as err:  # noqa: BLE001 - the runtime's own error types
        raise UsageError(f"{path}: LiteRT cannot load it ({str(err).splitlines()[0][:200]})") from None
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # the only listing of a file's operators the Python API has
    produced = {i for op in ops for i in op["outputs"]} | {d["index"] for d in interp.get_input_details()}

    def nbytes(i: int) -> int:
        t = tensors[i]
        return int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"]).itemsize

    const = lambda i: i >= 0 and i in tensors and i not in produced  # noqa: E731
    folded: dict[int, tuple[int, int, str]] = {}  # DEQUANTIZE of a constant: its output -> (bytes, elements, dtype)
    for op in ops:
        if op["op_name"] == "DEQUANTIZE" and op["inputs"] and const(op["inputs"][0]):
            i = op["inputs"][0]
            folded[op["outputs"][0]] = (nbytes(i), int(np.prod(tensors[i]["shape"])), np.dtype(tensors[i]["dtype"]).name)
    layers = []
    for op in ops:
        if op["op_name"] == "DEQUANTIZE" and op["outputs"] and op["outputs"][0] in folded:
            continue
        if op["op_name"] == "DELEGATE":
            continue
        param_bytes = params = 0
        stored: set[str] = set()
        for i in op["inputs"]:
            if const(i):
                param_bytes += nbytes(i)
                params += int(np.prod(tensors[i]["shape"]))
                stored.add(np.dtype(tensors[i]["dtype"]).name)
            elif i in folded:
                param_bytes += folded[i][0]
                params += folded[i][1]
                stored.add(folded[i][2])
        kind, macs = _litert_macs(op, tensors)
        layers.append({"name": f"{op['index']}:{op['op_name']}", "op": op["op_name"], "kind": kind, "params": params,
                       "param_bytes": param_bytes, "macs": macs, "precision": _litert_precision(op, tensors, stored),
                       "stored": sorted(stored) or None, "runs": None, "ms": None, "share": None})
    from importlib.metadata import PackageNotFoundError, version

    try:
        where = f"ai-edge-litert {version('ai-edge-litert')}"
    except PackageNotFoundError:
        where = "ai-edge-litert"
    latency = {"available": False,
               "reason": f"not available: the LiteRT Python interpreter ({where}) exposes no per-op profiler "
                         "(LiteRT's benchmark_model --enable_op_profiling=true has one)"}
    return {"layers": layers, "inserted": [], "latency": latency}


def _litert_macs(op: dict, tensors: dict) -> tuple[str | None, int | None]:
    name, inputs, outputs = op["op_name"], op["inputs"], op["outputs"]
    shape = lambda i: [int(d) for d in tensors[i]["shape"]] if i >= 0 and i in tensors else None  # noqa: E731
    out = shape(outputs[0]) if outputs else None
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(inputs) > 1:
        w = shape(inputs[1])
        if not w or not out:
            return None, None
        if name == "CONV_2D":  # weights O x kh x kw x I (NHWC): out elements x kh x kw x I
            return "conv", int(np.prod(out[1:], dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
        if name == "DEPTHWISE_CONV_2D":  # weights 1 x kh x kw x C: out elements x kh x kw
            return "depthwise", int(np.prod(out[1:], dtype=np.int64) * w[1] * w[2])
        return "dense", int(np.prod(out[1:], dtype=np.int64) * w[-1])  # weights O x I
    return None, None


def _litert_precision(op: dict, tensors: dict, stored: set[str]) -> str:
    if op["op_name"] in CONVERT_OPS:
        return "convert"
    kinds = {np.dtype(tensors[i]["dtype"]).name for i in [*op["inputs"], *op["outputs"]] if i >= 0 and i in tensors}
    if kinds & {"int8", "uint8", "int16"}:
        return "int8"  # full-integer, or dynamic-range (int8 weights, activations quantized on the fly)
    if "float16" in stored:
        return "fp16"  # float16 weights, dequantized to float32 for the kernel
    return "fp32"


# -- summaries and printing ---------------------------------------------------------------------


def summarize_ops(layers: list[dict], inserted: list[dict], timed: bool) -> list[dict]:
    """One row per operator type: count, bytes, MACs, how many ran int8 / in float, latency share."""
    rows: dict[str, dict] = {}
    for layer in layers:
        r = rows.setdefault(layer["op"], {"op": layer["op"], "count": 0, "param_bytes": 0, "macs": None,
                                          "int8": 0, "fp16": 0, "fp32": 0, "convert": 0, "share": 0.0 if timed else None})
        r["count"] += 1
        r["param_bytes"] += layer["param_bytes"]
        if layer["macs"] is not None:
            r["macs"] = (r["macs"] or 0) + layer["macs"]
        r[layer["precision"]] += 1
        if timed:
            r["share"] += layer.get("share") or 0.0
    for row in inserted:
        key = f"{row['op']} (inserted)"
        r = rows.setdefault(key, {"op": key, "count": 0, "param_bytes": 0, "macs": None, "int8": 0, "fp16": 0,
                                  "fp32": 0, "convert": 0, "share": 0.0})
        r["count"] += 1
        r[row["precision"]] += 1
        r["share"] += row["share"]
    out = sorted(rows.values(), key=lambda r: (-(r["share"] or 0), -(r["macs"] or 0), r["op"]))
    for r in out:
        if r["share"] is not None:
            r["share"] = round(r["share"], 5)
    return out


def _totals(view: dict) -> dict:
    layers = view["layers"]
    compute = [l for l in layers if l["precision"] != "convert"]
    return {
        "layers": len(layers), "param_bytes": sum(l["param_bytes"] for l in layers),
        "macs": sum(l["macs"] or 0 for l in layers),
        "int8_layers": sum(l["precision"] == "int8" for l in compute),
        "float_layers": sum(l["precision"] in ("fp32", "fp16") for l in compute),
        # Layers with MACs (the ones that matter for an int8 file) that stayed float.
        "float_mac_layers": [l["name"] for l in compute if l["macs"] and l["precision"] in ("fp32", "fp16")],
        # Stored float16, run in float32 (the runtime cast them: no fp16 kernel on this CPU).
        "fp16_run_as_fp32": [l["name"] for l in layers if l.get("note", "").startswith("float16 in the file")],
    }


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _label(layer: dict) -> str:
    return layer["op"] + ("/dw" if layer.get("kind") == "depthwise" else "")


def layer_lines(view: dict, top: int = 15) -> list[str]:
    """The view as plain text lines, at most 80 characters wide."""
    import textwrap

    t, lat = view["totals"], view["latency"]
    head = (f"{view['file']} ({view['runtime']}): {t['layers']} layers, {_count(t['param_bytes'])}B parameters, "
            f"{_count(t['macs'])} MACs/image; {t['int8_layers']} layers int8, {t['float_layers']} float")
    timing = "latency: " + (f"{lat['source']}; kernels {lat['kernel_ms']:.3f} ms/run" if lat.get("available")
                            else lat.get("reason", "not available"))
    lines = textwrap.wrap(head, 80) + textwrap.wrap(timing, 80, subsequent_indent="  ")
    lines.append("")
    lines.append(f"{'operator':<26}{'count':>6}{'params':>9}{'MACs':>9}{'int8':>6}{'float':>6}{'conv':>6}{'time':>8}")
    for r in view["ops"]:
        lines.append(f"{_short(r['op'], 25):<26}{r['count']:>6}{_count(r['param_bytes']) + 'B':>9}{_count(r['macs']):>9}"
                     f"{r['int8']:>6}{r['fp32'] + r['fp16']:>6}{r['convert']:>6}{_share(r['share']):>8}")
    layers = [l for l in view["layers"] if l["precision"] != "convert" or (l.get("share") or 0) > 0]
    key = (lambda l: -(l.get("share") or 0)) if lat.get("available") else (lambda l: -(l["macs"] or 0))
    shown = sorted(layers, key=key)[:top]
    lines.append("")
    order = "time" if lat.get("available") else "MACs"
    lines.append(f"layers: the top {len(shown)} of {len(view['layers'])} by {order}")
    lines.append(f"{'layer':<24}{'op':<18}{'prec':<8}{'params':>8}{'MACs':>8}{'ms':>7}{'time':>7}")
    for l in shown:
        ms = "-" if l.get("ms") is None else f"{l['ms']:.3f}"
        lines.append(f"{_short(l['name'], 23):<24}{_short(_label(l), 17):<18}{l['precision']:<8}"
                     f"{_count(l['param_bytes']) + 'B':>8}{_count(l['macs']):>8}{ms:>7}{_share(l.get('share')):>7}")
    lines.append("")
    if t["float_mac_layers"] and t["int8_layers"]:
        names = ", ".join(t["float_mac_layers"])
        lines += textwrap.wrap(f"stayed float (layers with MACs): {names}", 80, subsequent_indent="  ")
    if t.get("fp16_run_as_fp32"):
        lines += textwrap.wrap(f"{len(t['fp16_run_as_fp32'])} layers stored in float16 ran in float32: ONNX Runtime "
                               "cast them (no fp16 kernel on this CPU)", 80)
    if view.get("inserted"):
        lines.append(f"inserted by the runtime (no layer in the file): {len(view['inserted'])} kernels, "
                     f"{_share(lat.get('inserted_share'))} of the time")
    lines.append("conv: Quantize/Dequantize/Cast (precision changes); time: share of kernel time")
    return lines


def print_layers(view: dict, console=None, top: int = 15) -> None:
    """Print `layer_lines` (plain text: no table drawing, so it stays within 80 columns)."""
    write = console.print if console is not None else print
    for line in layer_lines(view, top):
        if console is not None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            write(line)


# -- the bench stage's files -------------------------------------------------------------------

LAYERS_DIR = "layers"


def write_views(root: Path, variants: list, benches: dict[str, dict], *, threads: int = 1,
                say=lambda line: None) -> list[Path]:
    """`layers/<variant>.json` for every variant with a file; a summary goes on its bench entry.

    A file that cannot be viewed gets `{"error": ...}` on its bench entry (said, not skipped silently).
    """
    from medlite.errors import MedliteError
    from medlite.runstate import write_json

    written = []
    for variant in variants:
        bench = benches.get(variant.name)
        if bench is None or not variant.file or "error" in bench or "skipped" in bench:
            continue
        try:
            view = layer_view(root / variant.file, variant.runtime, threads=threads)
        except Exception as err:  # noqa: BLE001 - one file's view failing must not lose every variant's timings
            reason = str(err) if isinstance(err, MedliteError) else f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
            bench["layers"] = {"error": reason}  # kept in results.json and shown by the report
            say(f"{variant.name}: no per-layer view ({reason})")
            continue
        out = root / LAYERS_DIR / f"{variant.name}.json"
        write_json(out, view)
        written.append(out)
        t = view["totals"]
        bench["layers"] = {"file": f"{LAYERS_DIR}/{out.name}", "layers": t["layers"], "int8_layers": t["int8_layers"],
                           "float_layers": t["float_layers"], "float_mac_layers": t["float_mac_layers"],
                           "latency": view["latency"].get("source") or view["latency"].get("reason")}
    return written
