"""The runtimes medlite runs deployed files in, as registered objects.

A `Runtime` says which files it reads (suffixes), which `Artifact` class loads them (imported
only when a file is opened, so this module imports no runtime library), how to install it, and
what it can do (capability flags), so callers ask `get_runtime(variant.runtime).metadata_in_file`
instead of comparing names. Variants store the runtime's *name* in results.json.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from medlite.runtime.errors import ArtifactError

if TYPE_CHECKING:  # the Artifact classes are imported when a file is opened, never here
    from medlite.runtime.artifact import Artifact


@dataclass(frozen=True)
class Runtime:
    """One registered runtime.

    name: what variants store (`variant.runtime`); label: what tables print; suffixes: the files it reads (lower case);
    artifact: "module:Class" of its Artifact subclass; library: the runtime library's import
    name (imported before a timed load); install_hint: what to run when it is missing.
    Capabilities:
    - metadata_in_file: the file itself holds key/value metadata (preprocessing, operating point),
      which can be rewritten in place (ONNX); otherwise both live in the `MODEL.ext.json` sidecar
      (LiteRT), which is then one of the files the model needs (`sidecar_required`).
    - primary: the pipeline's own export of every trained model; other formats are converted
      from the variants in this runtime (e.g. LiteRT from the trained ONNX variants).
    """

    name: str
    suffixes: tuple[str, ...]
    artifact: str
    library: str
    install_hint: str
    metadata_in_file: bool
    primary: bool = False
    label: str = ""  # what tables call it ("LiteRT interpreter"); the name where empty

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def sidecar_required(self) -> bool:
        return not self.metadata_in_file

    def artifact_class(self) -> type["Artifact"]:
        module, _, cls = self.artifact.partition(":")
        return getattr(importlib.import_module(module), cls)

    def available(self) -> bool:
        """Is the runtime library installed? (found without importing it)"""
        return importlib.util.find_spec(self.library.split(".")[0]) is not None


_REGISTRY: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    """Add a runtime (e.g. a vendor NPU delegate) without touching any caller."""
    clash = [s for s in runtime.suffixes for other in _REGISTRY.values()
             if other.name != runtime.name and s.lower() in other.suffixes]
    if clash:
        raise ValueError(f"runtime {runtime.name!r}: suffix {clash[0]} is already read by another runtime")
    _REGISTRY[runtime.name] = replace(runtime, suffixes=tuple(s.lower() for s in runtime.suffixes))
    return _REGISTRY[runtime.name]


register_runtime(Runtime("onnxruntime", (".onnx",), "medlite.runtime.onnxrt:OnnxArtifact", "onnxruntime",
                         "pip install onnxruntime", metadata_in_file=True, primary=True, label="ONNX Runtime"))
register_runtime(Runtime("litert", (".tflite",), "medlite.runtime.litert:LiteRTArtifact", "ai_edge_litert.interpreter",
                         "pip install medlite[litert]", metadata_in_file=False, label="LiteRT interpreter"))


def get_runtime(name: str) -> Runtime:
    """The registered runtime called `name`; an unknown name is an error listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArtifactError(f"unknown runtime {name!r}; registered: {', '.join(_REGISTRY)}") from None


def runtimes() -> dict[str, Runtime]:
    """The registered runtimes by name."""
    return dict(_REGISTRY)


def deployable_suffixes() -> tuple[str, ...]:
    return tuple(s for runtime in _REGISTRY.values() for s in runtime.suffixes)


def resolve_runtime(path: Path | str, runtime: str | None = None) -> Runtime:
    """The runtime for a file: the one named (a variant's `runtime`), else by the registry's suffixes."""
    if runtime is not None:
        return get_runtime(runtime)
    suffix = Path(path).suffix.lower()
    for candidate in _REGISTRY.values():
        if suffix in candidate.suffixes:
            return candidate
    known = ", ".join(deployable_suffixes())
    raise ArtifactError(f"{path}: no runtime reads {suffix or 'files without a suffix'} (known: {known})")


def runtime_for(path: Path | str, runtime: str | None = None) -> str:
    """The runtime *name* for a file (what results.json stores); see `resolve_runtime` for the object."""
    return resolve_runtime(path, runtime).name


def runtime_available(name: str) -> tuple[bool, str]:
    """(installed?, install hint) for a registered runtime, without loading a model."""
    runtime = get_runtime(name)
    return runtime.available(), runtime.install_hint


def open_artifact(path: Path | str, runtime: str | None = None, threads: int = 0) -> "Artifact":
    """Load a deployable file in its runtime. Raises ArtifactError (or RuntimeMissing) with one line."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    return resolve_runtime(path, runtime).artifact_class()(path, threads=threads)


def artifact_files(path: Path | str, runtime: str | None = None) -> list[Path]:
    """Every file the runtime needs for `path`, found without loading the model (sizes, copying)."""
    path = Path(path)
    return resolve_runtime(path, runtime).artifact_class().files_for(path)


def artifact_bytes(path: Path | str, runtime: str | None = None) -> int:
    """Size of everything the runtime needs: the file, its external data, its sidecar where required."""
    return sum(f.stat().st_size for f in artifact_files(path, runtime))
