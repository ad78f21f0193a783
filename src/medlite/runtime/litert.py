"""LiteRT (TensorFlow Lite) behind the runtime seam: the `ai-edge-litert` interpreter with XNNPACK.

A `.tflite` file has no medlite metadata inside it, so the preprocessing and the model card live
in the `MODEL.tflite.json` sidecar, which is therefore one of the files the model needs (and is
counted in its size). Integer-quantized inputs/outputs are (de)quantized here with the scale and
zero point the file declares, so every caller hands in float32 NCHW and gets float logits back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.runtime.artifact import Artifact
from medlite.runtime.errors import ArtifactError
from medlite.runtime.registry import get_runtime
from medlite.runtime.sidecar import sidecar_paths

INSTALL_HINT = get_runtime("litert").install_hint


class LiteRTArtifact(Artifact):
    runtime = "litert"
    file_format = "tflite"

    def _load(self) -> None:
        self._module = litert = self._import_runtime("the LiteRT runtime (ai-edge-litert)")
        try:
            # The default op resolver applies the XNNPACK delegate to every op it supports (CPU).
            self.interpreter = litert.Interpreter(model_path=str(self.path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise self._not_loadable("LiteRT", err) from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        if len(self._in["shape"]) != 4:
            raise ArtifactError(f"{self.path}: expected an N x C x H x W input, found shape {list(self._in['shape'])}")

    @property
    def input_shape(self) -> tuple[int | None, int, int, int]:
        n, c, h, w = (int(v) for v in self._in["shape"])
        return (n, c, h, w)

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._in["dtype"]).name

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":  # integer input: quantize with the file's own parameters
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self._in["index"], x.astype(dtype, copy=False))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        if np.dtype(self._out["dtype"]).kind in "iu":
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.copy()

    @staticmethod
    def files_for(path: Path) -> list[Path]:
        return [path, *[p for p in sidecar_paths(path)[:1] if p.is_file()]]

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"ai-edge-litert {version('ai-edge-litert')} (XNNPACK)"
        except PackageNotFoundError:
            return "ai-edge-litert (XNNPACK)"
