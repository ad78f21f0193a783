"""PyTorch module -> LiteRT (.tflite) files: fp32, int8 dynamic-range and int8 full-integer.

- fp32: `litert_torch.convert` (the maintained successor of ai-edge-torch; torch.export ->
  StableHLO -> TFLite). The input stays float32 N x C x H x W, batch 1, as on a device.
- int8_dynamic: ai-edge-quantizer `dynamic_wi8_afp32` (int8 weights, activations quantized on the
  fly per op: "dynamic-range quantization").
- fp16: ai-edge-quantizer float casting (`FLOAT_CASTING`): float16 weights of the convolutions and
  dense layers, each followed by a DEQUANTIZE op, computed in float32 by the CPU kernels (TFLite's
  "float16 quantization"): about half the bytes, the same arithmetic.
- int8_static: ai-edge-quantizer `static_wi8_ai8` (int8 weights and activations, ranges from
  min/max calibration on training images, Jacob et al., CVPR 2018). Inputs and outputs stay
  float: the file quantizes at its boundary, so every consumer feeds the same tensor.

A `.tflite` file carries no medlite metadata, so each gets a `FILE.tflite.json` sidecar with the
preprocessing (and, after evaluation, the model card), read by every consumer through
`medlite.runtime`. Heavy imports happen inside the functions: this is an optional extra
(`make litert`: requirements-litert.txt).
"""

from __future__ import annotations

from medlite.runstate import temp_path

import os
from pathlib import Path

import numpy as np

from medlite.data.preprocess import PreprocessSpec

# litert-torch cannot be resolved by pip beside medlite (pyproject.toml says why), so the converter
# and runtime are one pinned --no-deps file: requirements-litert.txt (`make litert` installs it).
INSTALL_HINT = "make litert, i.e. pip install --no-deps -r requirements-litert.txt"
FORMATS = {"fp32": "tflite-fp32", "int8_dynamic": "tflite-int8-dynamic", "int8_static": "tflite-int8-static",
           "fp16": "tflite-fp16"}
# What a conversion imports: the three entry points, and through them jax, opt_einsum, torchao,
# litert-converter, immutabledict...
_ENTRY_POINTS = {"litert_torch": "litert-torch", "ai_edge_litert.interpreter": "ai-edge-litert",
                 "ai_edge_quantizer.quantizer": "ai-edge-quantizer"}


def missing_packages() -> list[str]:
    """The LiteRT packages that are not importable here (empty when export can run).

    Importing, not only finding, the entry points: a converter installed with --no-deps is found
    but fails on its first missing dependency (issue 18: every `.tflite` file was "skipped (No module
    named 'opt_einsum')" and the run exited 0). The import is the one the conversion pays anyway.
    """
    import importlib
    import importlib.util

    missing = [dist for mod, dist in _ENTRY_POINTS.items() if importlib.util.find_spec(mod.split(".")[0]) is None]
    if missing:
        return missing
    for mod, dist in _ENTRY_POINTS.items():
        try:
            importlib.import_module(mod)
        except ImportError as err:
            return [f"{err.name or one_line(err)} (imported by {dist})"]
    return []


def fp16_unsupported() -> str | None:
    """Why this installation cannot write float16 LiteRT files (None: it can).

    Float16 weights come from ai-edge-quantizer's float-casting algorithm; an older quantizer
    without it is refused before anything trains, never skipped later.
    """
    try:
        from ai_edge_quantizer import algorithm_manager, qtyping
    except ImportError as err:
        return f"ai-edge-quantizer is not importable ({one_line(err)}; {INSTALL_HINT})"
    if not hasattr(algorithm_manager.AlgorithmName, "FLOAT_CASTING") or not hasattr(qtyping.TensorDataType, "FLOAT"):
        return "the installed ai-edge-quantizer has no float casting (FLOAT_CASTING), needed for float16 weights"
    return None


def _fp16_recipe():
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True,
    )
    manager = recipe_manager.RecipeManager()
    ops = qtyping.TFLOperationName
    # The ops float casting materializes (its registration in ai_edge_quantizer.algorithm_manager).
    for op in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.FULLY_CONNECTED, ops.CONV_2D_TRANSPOSE):
        manager.add_quantization_config(regex=".*", operation_name=op, op_config=config,
                                        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return manager.get_quantization_recipe()


def _write_sidecar(path: Path, spec: PreprocessSpec, variant: str) -> Path:
    from medlite.runtime import PREPROCESS_KEY, VARIANT_KEY, write_sidecar

    return write_sidecar(path, {PREPROCESS_KEY: spec.to_dict(), VARIANT_KEY: variant})


def convert_fp32(model, spec: PreprocessSpec, path: Path, variant: str) -> dict:
    """Convert `model` to a float32 .tflite and check it against PyTorch on a random input."""
    import litert_torch
    import torch

    model = model.eval().cpu()
    example = torch.randn(1, spec.channels, spec.image_size, spec.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)  # a killed run's leftover is removed by RunDir.open (exact temporary names)
    with torch.no_grad():
        edge_model = litert_torch.convert(model, (example,))
        edge_model.export(str(tmp))
        expected = model(example).numpy()
    os.replace(tmp, path)
    _write_sidecar(path, spec, variant)
    from medlite.runtime.litert import LiteRTArtifact

    got = LiteRTArtifact(path, threads=1).run(example.numpy())
    return {"converter": f"litert-torch {litert_torch.__version__}", "max_abs_diff": float(np.abs(expected - got).max())}


def quantize(fp32_path: Path, mode: str, path: Path, spec: PreprocessSpec, variant: str,
             calibration: np.ndarray | None = None) -> dict:
    """int8 or float16 .tflite from the fp32 one: `int8_dynamic`, `int8_static` (needs float32 NCHW
    calibration inputs) or `fp16` (float16 weights)."""
    from ai_edge_litert import interpreter as litert
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(fp32_path))
    if mode == "int8_dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = qt.quantize()
        facts: dict = {"quantizer": "ai-edge-quantizer dynamic_wi8_afp32"}
    elif mode == "int8_static":
        if calibration is None or not len(calibration):
            raise ValueError("int8_static needs calibration images")
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        interp = litert.Interpreter(model_path=str(fp32_path))
        signatures = interp.get_signature_list()
        (signature, io), = signatures.items()
        (input_name,) = io["inputs"]
        data = {signature: [{input_name: calibration[i : i + 1].astype(np.float32)} for i in range(len(calibration))]}
        result = qt.quantize(qt.calibrate(data, num_threads=1))
        facts = {"quantizer": "ai-edge-quantizer static_wi8_ai8 (min/max)", "calibration_images": int(len(calibration))}
    elif mode == "fp16":
        reason = fp16_unsupported()
        if reason:
            raise RuntimeError(reason)
        qt.load_quantization_recipe(_fp16_recipe())
        result = qt.quantize()
        facts = {"quantizer": "ai-edge-quantizer float_casting (float16 weights, float32 compute)"}
    else:
        raise ValueError(f"unknown LiteRT quantization {mode!r}")
    tmp = temp_path(path)  # a killed run's leftover is removed by RunDir.open (exact temporary names)
    if tmp.exists():
        tmp.unlink()
    result.export_model(str(tmp), overwrite=True)
    os.replace(tmp, path)
    _write_sidecar(path, spec, variant)
    return facts


def calibration_inputs(dataset, count: int, seed: int) -> np.ndarray:
    """`count` training images (a seeded random draw), prepared exactly as for training."""
    from medlite.data.preprocess import normalize

    train = dataset.splits["train"]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(train), size=min(count, len(train)), replace=False))
    return normalize(train.images[idx], dataset.preprocess)


def one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:240]
