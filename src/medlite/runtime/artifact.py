"""`Artifact`: one deployable file loaded in its runtime, behind one interface.

Subclasses (one per runtime: `onnxrt.OnnxArtifact`, `litert.LiteRTArtifact`) fill in `_load`,
`_run_batch`, `input_shape`, `files_for` and `version`; everything a consumer needs (the spec, the
card, the operating point, batching, probabilities, decisions) is done here once.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from medlite.activations import sigmoid, softmax  # noqa: F401 - re-exported: the runtime's own
from medlite.data.preprocess import PreprocessSpec, normalize
from medlite.runtime.errors import ArtifactError, RuntimeMissing
from medlite.runtime.host import resolve_threads
from medlite.runtime.registry import get_runtime
from medlite.runtime.operating_point import CARD_SOURCE, decide, decide_labels, read_operating_point
from medlite.runtime.sidecar import CARD_KEY, PREPROCESS_KEY, json_value, read_sidecar, sidecar_paths, spec_from_json


def activate(logits: np.ndarray, spec: PreprocessSpec | None) -> np.ndarray:
    """A file's logits -> probabilities (float64) by its spec's `activation`: a softmax over classes,
    or a sigmoid per label for multi-label models (numpy only)."""
    if spec is not None and spec.multilabel:
        return sigmoid(logits)
    return softmax(logits)


class Artifact:
    """One deployable file loaded in its runtime."""

    runtime: ClassVar[str] = ""  # the registered Runtime's name (medlite.runtime.registry)
    file_format: ClassVar[str] = ""  # "onnx", "tflite"

    def __init__(self, path: Path, threads: int = 0):
        self.path = Path(path)
        self.threads = resolve_threads(threads)
        self._lock = threading.Lock()  # interpreters are not re-entrant; serve shares one per model
        self._load()
        embedded = self.embedded_metadata()
        sidecar, sidecar_path = read_sidecar(self.path)
        self.sidecar = sidecar_path
        self.metadata: dict[str, Any] = {**{k: json_value(v) for k, v in sidecar.items()},
                                         **{k: json_value(v) for k, v in embedded.items()}}
        # Which file each key came from, so a bad value is reported against the file that holds it.
        origin = {**{k: str(sidecar_path) for k in sidecar}, **{k: str(self.path) for k in embedded}}
        self.spec: PreprocessSpec | None = None
        self.spec_source = f"no {PREPROCESS_KEY} in {self.path.name} and no sidecar " + " or ".join(
            p.name for p in sidecar_paths(self.path))
        if PREPROCESS_KEY in embedded:
            self.spec = spec_from_json(embedded[PREPROCESS_KEY], f"{self.path} metadata {PREPROCESS_KEY}")
            self.spec_source = f"{self.file_format} metadata"
        elif sidecar:
            self.spec = spec_from_json(sidecar, str(sidecar_path))
            self.spec_source = str(sidecar_path)
        card = self.metadata.get(CARD_KEY)
        self.card: dict | None = card if isinstance(card, dict) else None
        origin[CARD_SOURCE] = origin.get(CARD_KEY, str(self.path))
        names = list(self.spec.class_names) if self.spec else []
        self.operating_point = read_operating_point(self.metadata, self.card, names, origin)

    # -- for subclasses
    def _import_runtime(self, what: str) -> ModuleType:
        """The registered runtime's library, or RuntimeMissing naming the file and the install hint."""
        runtime = get_runtime(self.runtime)
        try:
            return importlib.import_module(runtime.library)
        except ImportError:
            raise RuntimeMissing(f"{self.path}: {what} is not installed ({runtime.install_hint})") from None

    def _not_loadable(self, what: str, err: BaseException) -> ArtifactError:
        """The runtime's refusal to load the file, as one line naming it."""
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return ArtifactError(f"{self.path}: not a loadable {what} model ({first[:200]})")

    def _load(self) -> None:
        raise NotImplementedError

    def embedded_metadata(self) -> dict[str, str]:
        """Key/value metadata stored inside the file itself ({} for formats without any)."""
        return {}

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int | None, int, int, int]:
        """(batch or None when dynamic, channels, height, width)."""
        raise NotImplementedError

    @property
    def input_dtype(self) -> str:
        return "float32"

    def files(self) -> list[Path]:
        """Every file the runtime needs for this model (sidecars holding the preprocessing included)."""
        return self.files_for(self.path)

    @staticmethod
    def files_for(path: Path) -> list[Path]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    # -- for callers
    def file_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files())

    def require_spec(self) -> PreprocessSpec:
        if self.spec is None:
            raise ArtifactError(f"{self.path}: no preprocessing spec ({self.spec_source})")
        return self.spec

    @property
    def class_names(self) -> list[str]:
        return list(self.require_spec().class_names)

    def run(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for a float32 NCHW batch, in chunks the runtime accepts. The project's one batched runner."""
        fixed = self.input_shape[0]
        step = fixed if fixed else batch_size
        outs = []
        with self._lock:
            for i in range(0, len(x), step):
                chunk = x[i : i + step]
                n = len(chunk)
                if fixed and n < fixed:  # a fixed-batch file: pad the last chunk, keep the real rows
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
                outs.append(np.asarray(self._run_batch(np.ascontiguousarray(chunk, dtype=np.float32)))[:n])
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def predict_proba(self, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 (N, H, W, C) images already at the model's size -> class probabilities (float64)."""
        return self.probabilities(normalize(images_uint8, self.require_spec()), batch_size)

    def probabilities(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Normalised float32 NCHW inputs -> class probabilities (float64), checked against the spec."""
        spec = self.require_spec()
        probs = activate(self.run(x, batch_size), spec)
        if probs.shape[1] != len(spec.class_names):
            raise ArtifactError(f"{self.path}: model has {probs.shape[1]} outputs but the spec names "
                                f"{len(spec.class_names)} classes")
        return probs

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Predicted class indices: at the file's operating point when it has one (or at `threshold`,
        which overrides its value; for a two-class model without one, class 1 is positive), else argmax.
        Multi-label models: multi-hot (N, K) at the stored per-label thresholds (0.5 without them, or `threshold`
        for every label when given)."""
        spec = getattr(self, "spec", None)  # (a bare Artifact in tests has only an operating point)
        if spec is not None and spec.multilabel:
            names = self.class_names
            op = {"thresholds": dict.fromkeys(names, threshold)} if threshold is not None else self.operating_point
            return decide_labels(probs, op, names)
        op = self.operating_point or {}
        t = threshold if threshold is not None else op.get("threshold")
        if t is None:
            return probs.argmax(axis=1)
        if "positive_index" not in op and probs.shape[1] != 2:
            raise ArtifactError(f"{self.path}: a threshold needs a positive class; this model has "
                                f"{probs.shape[1]} classes and no operating point")
        return decide(probs, op.get("positive_index", 1), t)

    def describe(self) -> dict:
        """What a consumer prints about the model: runtime, files, size, spec, card, operating point."""
        return {
            "file": str(self.path),
            "runtime": self.version(),
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "files": [str(f) for f in self.files()],
            "file_bytes": self.file_bytes(),
            "spec_source": self.spec_source,
            "preprocess": self.spec.to_dict() if self.spec else None,
            "card": self.card,
            "operating_point": self.operating_point,
        }
