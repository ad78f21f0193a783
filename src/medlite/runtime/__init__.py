"""The runtime seam: "an exported file and the runtime that runs it", behind one interface.

    from medlite.runtime import open_artifact
    art = open_artifact("models/student_kd.onnx")            # runtime from the registry
    art = open_artifact(path, runtime=variant.runtime)         # or named by the variant
    probs = art.predict_proba(uint8_images)                    # N x classes, float64
    art.spec, art.card, art.files(), art.file_bytes()

Runtimes register by name (`onnxruntime`, `litert`) with the file suffixes they read; callers
never check a suffix themselves. Each runtime module imports its library only when a file is
opened, and this package imports only numpy, Pillow (through `medlite.data.preprocess`) and the
standard library: the edge runner, `medlite predict` and `medlite serve` run on a device that
has none of torch, onnx, pydantic, ... installed.

What travels with a file (both runtimes read the same keys):
- `medlite.preprocess`: the PreprocessSpec JSON (ONNX metadata; a `FILE.json` sidecar otherwise),
- `medlite.card`: the model card (classes, dataset, recipe hash, test metrics with intervals, ...),
  in the `FILE.json` sidecar, written after evaluation: adding it to the file itself would
  change the very file its metrics were measured on,
- an operating point (a decision threshold chosen on validation), when one was chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medlite.data.preprocess import PreprocessSpec, normalize

PREPROCESS_KEY = "medlite.preprocess"
CARD_KEY = "medlite.card"
VARIANT_KEY = "medlite.variant"
# Where an operating point may be stored. Issue 10 chooses the threshold on validation; we read
# any of these keys (file metadata first, then the sidecar, then the card) and tolerate absence.
OPERATING_POINT_KEYS = ("medlite.operating_point", "medlite.threshold")


class ArtifactError(Exception):
    """A fault the user can fix (missing file, unloadable model, no preprocessing): one line, exit 2."""


class RuntimeMissing(ArtifactError):
    """The runtime library for this format is not installed; the message carries the install hint."""


# name -> (module, class, suffixes, install hint). Modules are imported only when a file is opened.
_REGISTRY: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "onnxruntime": ("medlite.runtime.onnxrt", "OnnxArtifact", (".onnx",), "pip install onnxruntime"),
    "litert": ("medlite.runtime.litert", "LiteRTArtifact", (".tflite",), "pip install medlite[litert]"),
}


def register_runtime(name: str, module: str, cls: str, suffixes: tuple[str, ...], install_hint: str) -> None:
    """Add a runtime (e.g. a vendor NPU delegate) without touching any caller."""
    _REGISTRY[name] = (module, cls, tuple(s.lower() for s in suffixes), install_hint)


def runtimes() -> dict[str, tuple[str, ...]]:
    """Registered runtime names and the file suffixes each reads."""
    return {name: entry[2] for name, entry in _REGISTRY.items()}


def deployable_suffixes() -> tuple[str, ...]:
    return tuple(s for entry in _REGISTRY.values() for s in entry[2])


def runtime_for(path: Path | str, runtime: str | None = None) -> str:
    """The runtime name for a file: the one given (a variant's `runtime`), else by the registry's suffixes."""
    if runtime is not None:
        if runtime not in _REGISTRY:
            raise ArtifactError(f"unknown runtime {runtime!r}; registered: {', '.join(_REGISTRY)}")
        return runtime
    suffix = Path(path).suffix.lower()
    for name, (_, _, suffixes, _) in _REGISTRY.items():
        if suffix in suffixes:
            return name
    known = ", ".join(deployable_suffixes())
    raise ArtifactError(f"{path}: no runtime reads {suffix or 'files without a suffix'} (known: {known})")


def runtime_available(name: str) -> tuple[bool, str]:
    """(installed?, install hint) for a registered runtime, without loading a model."""
    module, cls, _, hint = _REGISTRY[name]
    klass = getattr(importlib.import_module(module), cls)
    return klass.available(), hint


def open_artifact(path: Path | str, runtime: str | None = None, threads: int = 0) -> "Artifact":
    """Load a deployable file in its runtime. Raises ArtifactError (or RuntimeMissing) with one line."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    name = runtime_for(path, runtime)
    module, cls, _, _ = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(path, threads=threads)


def artifact_files(path: Path | str, runtime: str | None = None) -> list[Path]:
    """Every file the runtime needs for `path`, found without loading the model (sizes, copying)."""
    path = Path(path)
    module, cls, _, _ = _REGISTRY[runtime_for(path, runtime)]
    return getattr(importlib.import_module(module), cls).files_for(path)


def artifact_bytes(path: Path | str, runtime: str | None = None) -> int:
    """Size of everything the runtime needs: the file, its external data, its sidecar where required."""
    return sum(f.stat().st_size for f in artifact_files(path, runtime))


# -- helpers every runtime and consumer shares ----------------------------------------------


def resolve_threads(threads: int) -> int:
    """0 means "all cores this process may use"; the resolved number is passed to the runtime, so
    the thread count we report is the one that ran."""
    if threads < 0:
        raise ArtifactError(f"--threads {threads}: must be 0 (all cores) or a positive number")
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: subtract the max)."""
    z = np.asarray(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (VmHWM on Linux: ru_maxrss survives execve)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 2)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 2)


def sidecar_paths(model_path: Path) -> list[Path]:
    """Where metadata for a model may live beside it: MODEL.onnx.json (medlite writes this), then MODEL.json."""
    return [model_path.with_name(model_path.name + ".json"), model_path.with_suffix(".json")]


def read_sidecar(model_path: Path) -> tuple[dict, Path | None]:
    """The first sidecar document found ({} and None when there is none). Malformed JSON is an error."""
    for sidecar in sidecar_paths(model_path):
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ArtifactError(f"{sidecar}: unreadable metadata sidecar ({err})") from None
            if not isinstance(data, dict):
                raise ArtifactError(f"{sidecar}: metadata sidecar must be a JSON object")
            return data, sidecar
    return {}, None


def write_sidecar(model_path: Path, updates: dict) -> Path:
    """Merge `updates` into MODEL.ext.json atomically (other keys kept)."""
    target = sidecar_paths(model_path)[0]
    data: dict = {}
    if target.is_file():
        try:
            data = json.loads(target.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
    data.update(updates)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.medlite-tmp")  # the run directory's temp pattern
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, target)
    return target


def spec_from_json(data: Any, where: str) -> PreprocessSpec:
    """Accept the spec itself or a document that nests it under `medlite.preprocess` / `preprocess`."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{where}: not valid JSON ({err})") from None
    if isinstance(data, dict):
        for key in (PREPROCESS_KEY, "preprocess"):
            if key in data:
                return spec_from_json(data[key], where)
    try:
        return PreprocessSpec.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{where}: not a medlite preprocessing spec ({type(err).__name__}: {err})") from None


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_operating_point(metadata: dict, card: dict | None, class_names: list[str]) -> dict | None:
    """A decision threshold chosen on validation, if the file carries one; None otherwise.

    Tolerant by design (absent, a bare number, or {"threshold": t, "positive_class": name |
    "positive_index": i, ...}); anything unusable is ignored rather than guessed at, and the
    returned dict says where it came from. Only binary models use a threshold.
    """
    if len(class_names) != 2:
        return None
    candidates = [(k, metadata.get(k)) for k in OPERATING_POINT_KEYS]
    if isinstance(card, dict):
        candidates.append(("card.operating_point", card.get("operating_point")))
    for source, raw in candidates:
        value = _json_value(raw)
        if value is None:
            continue
        threshold, positive = None, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            threshold = float(value)
        elif isinstance(value, dict):
            for key in ("threshold", "value", "t"):
                if isinstance(value.get(key), (int, float)) and not isinstance(value.get(key), bool):
                    threshold = float(value[key])
                    break
            named, index = value.get("positive_class"), value.get("positive_index")
            if isinstance(named, str) and named in class_names:
                positive = class_names.index(named)
            elif isinstance(index, int) and 0 <= index < 2:
                positive = index
            # A threshold for one class applied to another would silently invert the decision.
            if (isinstance(named, str) and named not in class_names) or (
                    isinstance(named, str) and isinstance(index, int) and class_names[index % 2] != named):
                raise ArtifactError(f"{source} names class {named!r} at index {index}, "
                                    f"which does not match the model's classes {class_names}")
        if threshold is None or not 0.0 < threshold < 1.0:
            continue
        if positive is None:
            positive = 1  # medlite's binary metrics treat class index 1 as positive
        extra = {k: v for k, v in value.items() if k not in ("threshold",)} if isinstance(value, dict) else {}
        return {"threshold": threshold, "positive_index": positive, "positive_class": class_names[positive],
                "source": source, **{k: v for k, v in extra.items() if k in ("chosen_on", "rule", "split")}}
    return None


# -- the interface --------------------------------------------------------------------------


class Artifact:
    """One deployable file loaded in its runtime. Subclasses fill in `_load`, `_run_batch`, `files`."""

    runtime: ClassVar[str] = ""
    library: ClassVar[str] = ""  # the import name, for `available()`
    file_format: ClassVar[str] = ""  # "onnx", "tflite"

    def __init__(self, path: Path, threads: int = 0):
        self.path = Path(path)
        self.threads = resolve_threads(threads)
        self._lock = threading.Lock()  # interpreters are not re-entrant; serve shares one per model
        self._load()
        embedded = self.embedded_metadata()
        sidecar, sidecar_path = read_sidecar(self.path)
        self.sidecar = sidecar_path
        self.metadata: dict[str, Any] = {**{k: _json_value(v) for k, v in sidecar.items()},
                                         **{k: _json_value(v) for k, v in embedded.items()}}
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
        names = list(self.spec.class_names) if self.spec else []
        self.operating_point = read_operating_point(self.metadata, self.card, names)

    # -- for subclasses
    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec(cls.library) is not None

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
        """Logits for a float32 NCHW batch, in chunks the runtime accepts."""
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
        spec = self.require_spec()
        probs = softmax(self.run(normalize(images_uint8, spec), batch_size))
        if probs.shape[1] != len(spec.class_names):
            raise ArtifactError(f"{self.path}: model has {probs.shape[1]} outputs but the spec names "
                                f"{len(spec.class_names)} classes")
        return probs

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Predicted class indices: argmax, or for a binary model the operating point (or `threshold`)."""
        t = threshold if threshold is not None else (self.operating_point or {}).get("threshold")
        if t is not None and probs.shape[1] == 2:
            pos = (self.operating_point or {}).get("positive_index", 1)
            return np.where(probs[:, pos] >= t, pos, 1 - pos)
        return probs.argmax(axis=1)

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


class _RuntimeInfo:  # placeholder until the runtime registry holds Runtime objects (branch `runtime`)
    def __init__(self, name: str) -> None:
        self.name = name
        self.metadata_in_file = name == "onnxruntime"


def get_runtime(name: str) -> _RuntimeInfo:
    if name not in _REGISTRY:
        raise ArtifactError(f"unknown runtime {name!r}; registered: {', '.join(_REGISTRY)}")
    return _RuntimeInfo(name)
