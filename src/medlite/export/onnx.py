"""PyTorch module -> ONNX file (dynamic batch), with the preprocessing stored inside the file.

Every medlite ONNX file has one input `input` (float32 N x C x H x W, already normalised) and
one output `logits` (N x classes), and carries `medlite.preprocess` (JSON of a PreprocessSpec)
in its metadata, so the edge runner can prepare images exactly as training did. After
evaluation the pipeline may add `medlite.operating_point` (the decision threshold chosen on the
validation split; see OPERATING_POINT_KEY), which `content_hash` ignores.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from medlite.data.preprocess import PreprocessSpec
# The one external-data finder and size: the runtime seam's (the .onnx and the files it names).
from medlite.runtime import artifact_bytes, artifact_files  # noqa: F401 - re-exported for the pipeline
from medlite.runtime import OPERATING_POINT_KEYS, PREPROCESS_KEY
from medlite.runtime.onnxrt import INPUT_NAME, OUTPUT_NAME, OnnxArtifact

# Warnings of the TorchScript exporter that we understand, each with why it is safe to hide; any
# other warning (a TracerWarning from a model's own data-dependent code above all) is shown.
# Each entry: (category name, message regex, module regex of where it is raised).
UNDERSTOOD_EXPORT_WARNINGS = (
    # We choose the TorchScript exporter on purpose (fast on CPU; maps QAT fake-quantization to
    # QuantizeLinear/DequantizeLinear), and torch calls its own deprecated helper inside it.
    ("DeprecationWarning", r"You are using the legacy TorchScript-based ONNX export", r""),
    ("DeprecationWarning", r"The feature will be removed", r"torch\.onnx\._internal\.torchscript_exporter"),
    # A tensor formatted into a string (timm's size-check messages): text, never data flow.
    ("TracerWarning", r"Converting a tensor to a Python number", r"torch\._tensor$"),
    # torch._assert / timm's patch-embedding size checks: checks of the fixed image size, which the
    # graph does not keep; only the batch is dynamic, and export_onnx checks a second batch size.
    ("TracerWarning", r"Converting a tensor to a Python boolean", r"torch$"),
    ("TracerWarning", r"Converting a tensor to a Python boolean", r"timm\.layers\.patch_embed$"),
    # timm ViT's optional attention-mask branch: no mask is ever passed.
    ("TracerWarning", r"Converting a tensor to a Python boolean", r"timm\.models\.vision_transformer$"),
    # QAT's fake-quantizers test their `initialized` buffer: model state, fixed once calibrated, so
    # the trace keeps the calibrated branch, which is the one to deploy.
    ("TracerWarning", r"Converting a tensor to a Python boolean", r"medlite\.compress\.qat$"),
)

# The clinical decision threshold chosen on the validation split (medlite.evaluate.operating_point):
# JSON {"positive_class", "positive_index", "threshold", "rule", ...}. Predict `positive_class` when
# its probability >= threshold, else the most probable other class. Absent: plain argmax.
OPERATING_POINT_KEY = OPERATING_POINT_KEYS[0]
OPSET = 17


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


def content_hash(path: Path) -> str:
    """SHA-256 of a model file, blind to its operating-point metadata.

    The threshold is written into the deployed file after evaluation; it changes no prediction the
    model makes, so stage keys that depend on the file must not see it (or every rerun would redo
    the stages keyed before it was written).
    """
    import hashlib

    data = path.read_bytes()
    if path.suffix != ".onnx" or OPERATING_POINT_KEY.encode() not in data:
        return hashlib.sha256(data).hexdigest()
    import onnx

    proto = onnx.load_model_from_string(data)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != OPERATING_POINT_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def write_metadata(path: Path, entries: dict[str, str | None]) -> bool:
    """Set (or, for None, remove) metadata entries in place, atomically; False when nothing changed."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    current = {p.key: p.value for p in proto.metadata_props}
    wanted = {**current, **{k: v for k, v in entries.items() if v is not None}}
    for key, value in entries.items():
        if value is None:
            wanted.pop(key, None)
    if wanted == current:
        return False
    order = [k for k in current if k in wanted] + [k for k in wanted if k not in current]
    del proto.metadata_props[:]
    for key in order:
        proto.metadata_props.add(key=key, value=wanted[key])
    save_onnx(proto, path)
    return True


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
            filter_export_warnings()
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
    # A batch size other than the traced one: a trace that baked the batch in fails here. The extra
    # image comes from a private generator, so the global RNG (later training) sees what it did before.
    extra = torch.randn(1, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    check = torch.cat([example, extra])
    with torch.no_grad():
        expected = model(check).numpy()
    got = run_onnx(path, check.numpy())
    return {"max_abs_diff": float(np.abs(expected - got).max()), "file_bytes": artifact_bytes(path)}


def filter_export_warnings() -> None:
    """Inside `warnings.catch_warnings()`: hide the understood exporter warnings, show the rest."""
    from torch.jit import TracerWarning

    categories = {"DeprecationWarning": DeprecationWarning, "TracerWarning": TracerWarning}
    for category, message, module in UNDERSTOOD_EXPORT_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=categories[category], module=module)


def session(path: Path, threads: int = 0) -> OnnxArtifact:
    """The file loaded in ONNX Runtime (threads=0: all cores), for repeated `run_onnx(..., sess=...)`."""
    return OnnxArtifact(path, threads=threads)


def run_onnx(path: Path, inputs: np.ndarray, batch_size: int = 256, sess: OnnxArtifact | None = None) -> np.ndarray:
    """Logits for float32 NCHW inputs, in batches, by the runtime seam's one batched runner."""
    return (sess or OnnxArtifact(path)).run(inputs, batch_size=batch_size)
