"""The runtime seam: "an exported file and the runtime that runs it", behind one interface.

    from medlite.runtime import open_artifact
    art = open_artifact("models/student_kd.onnx")            # runtime from the registry
    art = open_artifact(path, runtime=variant.runtime)         # or named by the variant
    probs = art.predict_proba(uint8_images)                    # N x classes, float64
    art.spec, art.card, art.operating_point, art.files(), art.file_bytes()
    get_runtime(variant.runtime).metadata_in_file              # a capability, not a name

The package, by job:
- `registry`: the `Runtime` objects (name, suffixes, Artifact class, install hint, capabilities),
  `get_runtime`, `open_artifact`, `artifact_files` / `artifact_bytes`;
- `artifact`: the `Artifact` base every runtime subclasses, and the one `softmax`;
- `sidecar`: the metadata keys and the `MODEL.ext.json` sidecar;
- `operating_point`: reading the stored decision threshold, and the decision rule;
- `host`: threads and peak memory of this process;
- `onnxrt`, `litert`: the runtimes; `adapt`: reading an image for a model.

Each runtime module imports its library only when a file is opened, and this package imports only
numpy, Pillow (through `medlite.data.preprocess`) and the standard library: the edge runner,
`medlite predict` and `medlite serve` run on a device that has none of torch, onnx, pydantic, ...
"""

from __future__ import annotations

from medlite.runtime.artifact import Artifact, activate, softmax
from medlite.runtime.errors import ArtifactError, RuntimeMissing
from medlite.runtime.host import cpu_count, peak_rss_mb, resolve_threads
from medlite.runtime.operating_point import OPERATING_POINT_KEYS, decide, decide_labels, read_operating_point
from medlite.runtime.registry import (
    Runtime,
    artifact_bytes,
    artifact_files,
    deployable_suffixes,
    get_runtime,
    open_artifact,
    register_runtime,
    resolve_runtime,
    runtime_available,
    runtime_for,
    runtimes,
)
from medlite.runtime.sidecar import (
    CARD_KEY,
    PREPROCESS_KEY,
    VARIANT_KEY,
    json_value,
    read_sidecar,
    sidecar_paths,
    spec_from_json,
    write_sidecar,
)

__all__ = [
    "Artifact", "ArtifactError", "CARD_KEY", "OPERATING_POINT_KEYS", "PREPROCESS_KEY", "Runtime", "RuntimeMissing",
    "VARIANT_KEY", "artifact_bytes", "artifact_files", "cpu_count", "decide", "decide_labels", "deployable_suffixes", "get_runtime",
    "json_value", "open_artifact", "peak_rss_mb", "read_operating_point", "read_sidecar", "register_runtime",
    "resolve_runtime", "resolve_threads", "runtime_available", "runtime_for", "runtimes", "sidecar_paths",
    "activate", "softmax", "spec_from_json", "write_sidecar",
]
