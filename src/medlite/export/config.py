"""The recipe's `export` section: which deployment formats every trained variant is exported to.

    export:
      formats: [onnx, litert]          # onnx always (the reference every variant is measured in)
      litert:
        quantize: [fp32, int8_dynamic, int8_static]   # or fp16 (float16 weights)
        calibration_images: 256

Imports only pydantic: recipe.py imports this module and must stay instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LITERT_MODES = ("fp32", "int8_dynamic", "int8_static")  # the default list; `fp16` is asked for by name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LiteRTConfig(_Strict):
    """LiteRT (TensorFlow Lite) files made with litert-torch and ai-edge-quantizer.

    fp32: litert-torch's converter. int8_dynamic: int8 weights, float activations quantized on
    the fly (ai-edge-quantizer `dynamic_wi8_afp32`). int8_static: int8 weights and activations,
    ranges calibrated on training images (`static_wi8_ai8`, min/max). fp16: float16 weights
    (ai-edge-quantizer float casting), float32 arithmetic.
    """

    quantize: list[Literal["fp32", "int8_dynamic", "int8_static", "fp16"]] = Field(
        default_factory=lambda: list(LITERT_MODES), description="which LiteRT files to make per trained variant"
    )
    calibration_images: int = Field(256, ge=1, description="training images for int8_static calibration")

    @field_validator("quantize")
    @classmethod
    def _unique(cls, modes: list[str]) -> list[str]:
        if len(set(modes)) != len(modes):
            raise ValueError(f"duplicate entries in {modes}")
        return modes


class ExportConfig(_Strict):
    formats: list[str] = Field(
        default_factory=lambda: ["onnx"],
        description="deployment formats (medlite.export.registry); litert needs `pip install medlite[litert]`",
    )
    litert: LiteRTConfig = LiteRTConfig()

    @field_validator("formats")
    @classmethod
    def _onnx_first(cls, formats: list[str]) -> list[str]:
        from medlite.export import registry  # light: no torch, no onnx

        for name in formats:
            if name not in registry.FORMATS:
                raise ValueError(registry.unknown_message(name))
        if "onnx" not in formats:
            # Compression, explanations and the benchmark reference all start from the ONNX file.
            raise ValueError("onnx must stay in the list (every variant is exported to ONNX first)")
        if len(set(formats)) != len(formats):
            raise ValueError(f"duplicate entries in {formats}")
        return formats
