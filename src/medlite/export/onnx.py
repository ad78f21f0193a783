"""PyTorch module -> ONNX file (dynamic batch), with the preprocessing stored inside the file.

Every medlite ONNX file has one input `input` (float32 N x C x H x W, already normalised) and
one output `logits` (N x classes), and carries `medlite.preprocess` (JSON of a PreprocessSpec)
in its metadata, so the edge runner can prepare images exactly as training did.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from medlite.data.preprocess import PreprocessSpec

INPUT_NAME, OUTPUT_NAME = "input", "logits"
PREPROCESS_KEY = "medlite.preprocess"
OPSET = 17


def artifact_files(path: Path) -> list[Path]:
    """Every file the runtime needs for this model: the .onnx and any external-data files it names."""
    import onnx

    files = [path]
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    files += [path.parent / loc for loc in sorted(locations)]
    return files


def artifact_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in artifact_files(path))


def set_metadata(model_proto, spec: PreprocessSpec, extra: dict[str, str] | None = None) -> None:
    entries = {PREPROCESS_KEY: json.dumps(spec.to_dict()), **(extra or {})}
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in entries.items():
        prop = existing.get(key) or model_proto.metadata_props.add()
        prop.key, prop.value = key, value


def read_preprocess(path: Path) -> PreprocessSpec | None:
    """The preprocessing stored in an ONNX file (None for files medlite did not write)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == PREPROCESS_KEY:
            return PreprocessSpec.from_dict(json.loads(prop.value))
    return None


def save_onnx(model_proto, path: Path) -> None:
    """Write atomically: a killed run never leaves a truncated model under the final name."""
    import onnx

    from medlite.runstate import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model_proto, str(tmp))


def export_onnx(model, spec: PreprocessSpec, path: Path, extra_metadata: dict[str, str] | None = None) -> dict:
    """Export `model` (eval mode, CPU) and check it against PyTorch on a random batch.

    Returns {"max_abs_diff": ..., "file_bytes": ...}. Uses the TorchScript exporter: it is
    fast on CPU and maps fake-quantization to QuantizeLinear/DequantizeLinear for QAT.
    """
    import onnx
    import torch

    from medlite.runstate import temp_path

    model = model.eval().cpu()
    example = torch.randn(2, spec.channels, spec.image_size, spec.image_size)
    tmp = temp_path(path.with_name(path.name + ".export"))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)  # also when the exporter fails half-way
    set_metadata(proto, spec, extra_metadata)
    onnx.checker.check_model(proto)
    save_onnx(proto, path)
    with torch.no_grad():
        expected = model(example).numpy()
    got = run_onnx(path, example.numpy())
    return {"max_abs_diff": float(np.abs(expected - got).max()), "file_bytes": artifact_bytes(path)}


def session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session (threads=0: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, inputs: np.ndarray, batch_size: int = 256, sess=None) -> np.ndarray:
    """Logits for float32 NCHW inputs, computed by ONNX Runtime in batches."""
    sess = sess or session(path)
    outs = [sess.run([OUTPUT_NAME], {INPUT_NAME: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
