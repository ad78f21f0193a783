"""ONNX Runtime behind the runtime seam (CPU execution provider).

Imports onnxruntime only; the external-data files an ONNX model names are found with a small
protobuf-free scan of ONNX Runtime's own view, so the `onnx` package is not needed on a device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.runtime.artifact import Artifact

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # what medlite's exporter writes (medlite.export.onnx)


class OnnxArtifact(Artifact):
    runtime = "onnxruntime"
    file_format = "onnx"

    def _load(self) -> None:
        self._ort = ort = self._import_runtime("ONNX Runtime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        # One inter-op thread: our graphs are a single chain, and extra pools only add contention.
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises several private exception types
            raise self._not_loadable("ONNX", err) from None
        self._input = self.session.get_inputs()[0]
        self._output = self.session.get_outputs()[0].name

    def embedded_metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def input_shape(self) -> tuple[int | None, int, int, int]:
        dims = list(self._input.shape)
        batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        rest = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
        if self.spec is not None and len(rest) == 3:
            rest = [rest[0] or self.spec.channels, rest[1] or self.spec.image_size, rest[2] or self.spec.image_size]
        return (batch, *rest)  # type: ignore[return-value]

    @property
    def input_name(self) -> str:
        return self._input.name

    @property
    def input_dtype(self) -> str:
        return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}.get(
            self._input.type, self._input.type)

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input.name: x.astype(self.input_dtype, copy=False)})[0]

    @staticmethod
    def files_for(path: Path) -> list[Path]:
        return [path, *external_data_files(path)]

    def version(self) -> str:
        return f"onnxruntime {self._ort.__version__}"


def external_data_files(path: Path) -> list[Path]:
    """External-data files an ONNX model names (`location` entries), found without the onnx package.

    The exporter writes them next to the model; we look for `location` strings that name an
    existing file in the model's folder. With `onnx` installed we ask it instead (exact).
    """
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        model = onnx.load(str(path), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        return [path.parent / loc for loc in sorted(locations)]
    data = path.read_bytes()
    if b"location" not in data:
        return []
    found = []
    for candidate in sorted(path.parent.iterdir()):
        if candidate != path and candidate.is_file() and candidate.name.encode() in data:
            if candidate.suffix.lower() not in (".json", ".onnx"):
                found.append(candidate)
    return found
