"""The built-in compression methods: each one's config model and its registration (light: pydantic only).

The stage functions live in `medlite.compress.stages` and are imported only when a method runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medlite.compress.registry import ONNX_FP16, ONNX_FP32, ONNX_INT8_DYNAMIC, ONNX_INT8_QDQ, PYTORCH, MethodSpec, register
from medlite.config_base import Strict


class FineTune(Strict):
    """Settings every method that fine-tunes after compressing shares."""

    epochs: int = Field(3, ge=0)
    lr: float = Field(5e-4, gt=0)
    distill: bool = Field(True, description="fine-tune with the teacher's distillation loss (the teacher's own variants distil from the uncompressed teacher)")


class PruneStructuredConfig(FineTune):
    # 30% of the channels of every layer: about half the MACs (they scale with in x out channels).
    ratio: float = Field(0.3, gt=0, lt=1, description="fraction of channels removed")
    epochs: int = Field(15, ge=0)
    lr: float = Field(1e-3, gt=0)
    importance: Literal["l1", "l2", "random", "taylor"] = "l1"
    ignore_layers: list[str] = Field(default_factory=list, description="module names never pruned")
    global_pruning: bool = False


class PruneUnstructuredConfig(FineTune):
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    final_sparsity: float = Field(0.5, gt=0, lt=1)
    scope: Literal["global", "layer"] = "global"

    @model_validator(mode="after")
    def _ramp_up(self) -> "PruneUnstructuredConfig":
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed final_sparsity")
        return self


class Int8StaticConfig(Strict):
    calibration_images: int = Field(256, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    percentile: float = Field(99.999, gt=90, le=100)


class Int8QatConfig(FineTune):
    # QAT starts from a trained network: a small learning rate keeps it near the float optimum.
    lr: float = Field(1e-4, gt=0)
    calibration_images: int = Field(256, ge=1)


_STAGES = "medlite.compress.stages"
register(MethodSpec(
    "prune_structured", "_pruned", frozenset({PYTORCH}), frozenset({PYTORCH, ONNX_FP32}),
    f"{_STAGES}:structured", config="prune_structured", config_model=PruneStructuredConfig, schema=3,
    doc="remove whole channels (Torch-Pruning dependency graph), fine-tune; keeps a reloadable checkpoint",
))
register(MethodSpec(
    # The masks are baked into a dense file: only the ONNX file carries on (a PyTorch fine-tune
    # after it would refill the zeros).
    "prune_unstructured", "_sparse", frozenset({PYTORCH}), frozenset({ONNX_FP32}),
    f"{_STAGES}:unstructured", config="prune_unstructured", config_model=PruneUnstructuredConfig, schema=2,
    doc="gradual magnitude pruning during fine-tuning (Zhu & Gupta, 2017)",
))
register(MethodSpec(
    "int8_dynamic", "_int8_dynamic", frozenset({ONNX_FP32}), frozenset({ONNX_INT8_DYNAMIC}),
    f"{_STAGES}:dynamic", schema=3,
    doc="ONNX Runtime weight-only int8 (ConvInteger/MatMulInteger), no calibration",
))
register(MethodSpec(
    "int8_static", "_int8_static", frozenset({ONNX_FP32}), frozenset({ONNX_INT8_QDQ}),
    f"{_STAGES}:static", config="int8_static", config_model=Int8StaticConfig, schema=2,
    doc="ONNX Runtime static QDQ int8, calibrated on training images",
))
register(MethodSpec(
    "int8_qat", "_int8_qat", frozenset({PYTORCH}), frozenset({ONNX_INT8_QDQ}),
    f"{_STAGES}:qat", config="int8_qat", config_model=Int8QatConfig, schema=3,
    doc="quantization-aware fine-tuning (fake quant, BN folded), exported as static QDQ with the learned ranges",
))
register(MethodSpec(
    "fp16", "_fp16", frozenset({ONNX_FP32}), frozenset({ONNX_FP16}),
    f"{_STAGES}:fp16", schema=1, check="medlite.compress.fp16:missing_packages",
    install_hint="pip install 'medlite[fp16]', i.e. pip install onnxconverter-common==1.16.0",
    doc="float16 weights and activations (onnxconverter-common), float32 input and output; on x86 CPUs "
        "ONNX Runtime inserts casts and is often slower than fp32",
))
