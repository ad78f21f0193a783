"""What travels with a deployed file, and the `MODEL.ext.json` sidecar that carries it where the
file itself cannot.

Keys (both runtimes read the same ones):
- `medlite.preprocess`: the PreprocessSpec JSON (ONNX metadata; the sidecar otherwise),
- `medlite.card`: the model card, in the sidecar, written after evaluation (adding it to the file
  itself would change the very file its metrics were measured on),
- `medlite.variant`: the variant's name,
- an operating point (`medlite.runtime.operating_point`), when one was chosen.

A sidecar that exists but is not a JSON object is an error naming it, when read and when merged
into: replacing it would silently drop the preprocessing or the card it holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlite.data.preprocess import PreprocessSpec
from medlite.errors import UsageError
from medlite.runstate import read_json, write_atomic
from medlite.runtime.errors import ArtifactError

PREPROCESS_KEY = "medlite.preprocess"
CARD_KEY = "medlite.card"
VARIANT_KEY = "medlite.variant"


def sidecar_paths(model_path: Path) -> list[Path]:
    """Where metadata for a model may live beside it: MODEL.onnx.json (medlite writes this), then MODEL.json."""
    return [model_path.with_name(model_path.name + ".json"), model_path.with_suffix(".json")]


def _read_object(sidecar: Path) -> dict:
    """The JSON object in an existing sidecar, through the project's one JSON reader."""
    try:
        return read_json(sidecar)
    except UsageError as err:  # read_json's one-line message names the file; keep it, as ours
        raise ArtifactError(f"{err} (metadata sidecar)") from None
    except UnicodeDecodeError:  # a binary file under a .json name
        raise ArtifactError(f"{sidecar}: unreadable metadata sidecar (not UTF-8 text)") from None


def read_sidecar(model_path: Path) -> tuple[dict, Path | None]:
    """The first sidecar document found ({} and None when there is none). Malformed JSON is an error."""
    for sidecar in sidecar_paths(model_path):
        if sidecar.is_file():
            return _read_object(sidecar), sidecar
    return {}, None


def write_sidecar(model_path: Path, updates: dict) -> Path:
    """Merge `updates` into MODEL.ext.json atomically (other keys kept); a malformed one is refused."""
    target = sidecar_paths(model_path)[0]
    data = _read_object(target) if target.exists() else {}
    data.update(updates)
    write_atomic(target, json.dumps(data, indent=1, sort_keys=True))
    return target


def json_value(value: Any) -> Any:
    """A metadata value decoded from JSON when it is JSON text (ONNX metadata holds strings only)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


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
