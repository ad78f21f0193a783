"""The operating point a deployed file carries (a decision threshold for one class, chosen on
validation by `medlite.evaluate.operating_point`), read the same way by every consumer.

Absent is fine (decisions are the argmax). Present but unusable is an error naming the file:
a device that silently fell back to the argmax would miss the cases the threshold was chosen
to find, with nothing to show for it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from medlite.runtime.errors import ArtifactError
from medlite.runtime.sidecar import json_value

# Where an operating point may be stored: file metadata first, then the sidecar, then the card.
OPERATING_POINT_KEYS = ("medlite.operating_point", "medlite.threshold")
CARD_SOURCE = "card.operating_point"
THRESHOLD_KEYS = ("threshold", "value", "t")  # "threshold" is what medlite writes
KEPT_KEYS = ("chosen_on", "rule", "split")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_per_label(value: dict, where: str, class_names: list[str]) -> dict:
    """A multi-label file's operating point {"thresholds": {label: t}, "rule": ...}: every label of the
    model has a threshold between 0 and 1, and no other label is named."""
    thresholds = value["thresholds"]
    if not isinstance(thresholds, dict):
        raise ArtifactError(f"{where}: operating point `thresholds` {thresholds!r} is not a mapping label -> threshold")
    unknown = [k for k in thresholds if k not in class_names]
    missing = [k for k in class_names if k not in thresholds]
    if unknown or missing:
        raise ArtifactError(f"{where}: operating point thresholds name {unknown or 'no unknown label'} and miss "
                            f"{missing or 'no label'} of the model's labels {class_names}")
    for name, t in thresholds.items():
        if not _number(t) or not 0.0 < float(t) < 1.0:
            raise ArtifactError(f"{where}: operating point threshold of {name!r} ({t!r}) is not between 0 and 1")
    return {"thresholds": {k: float(thresholds[k]) for k in class_names},
            **{k: value[k] for k in KEPT_KEYS if k in value}}


def _parse(value: Any, where: str, class_names: list[str]) -> dict:
    """One stored operating point -> {"threshold", "positive_index", "positive_class", ...}
    (multi-label: {"thresholds": {label: t}, ...})."""
    if isinstance(value, dict) and "thresholds" in value:
        return _parse_per_label(value, where, class_names)
    if _number(value):
        threshold, named, index, extra = float(value), None, None, {}
    elif isinstance(value, dict):
        found = [k for k in THRESHOLD_KEYS if k in value]
        if len(found) != 1 or not _number(value[found[0]]):
            raise ArtifactError(f"{where}: operating point {value!r} has no numeric `threshold`")
        threshold, named, index = float(value[found[0]]), value.get("positive_class"), value.get("positive_index")
        extra = {k: value[k] for k in KEPT_KEYS if k in value}
    else:
        raise ArtifactError(f"{where}: operating point {value!r} is neither a threshold nor "
                            "{\"threshold\": t, \"positive_class\": name}")
    if not 0.0 < threshold < 1.0:
        raise ArtifactError(f"{where}: operating point threshold {threshold:g} is not between 0 and 1")
    if named is not None and named not in class_names:
        raise ArtifactError(f"{where}: operating point names class {named!r}, not one of the model's "
                            f"classes {class_names}")
    if index is not None and not (isinstance(index, int) and not isinstance(index, bool)
                                  and 0 <= index < len(class_names)):
        raise ArtifactError(f"{where}: operating point positive_index {index!r} is not a class index "
                            f"of the model's {len(class_names)} classes")
    # A threshold for one class applied to another would silently invert the decision.
    if named is not None and index is not None and class_names[index] != named:
        raise ArtifactError(f"{where}: operating point names class {named!r} at index {index}, "
                            f"which does not match the model's classes {class_names}")
    positive = class_names.index(named) if named is not None else index
    if positive is None:
        if len(class_names) != 2:
            raise ArtifactError(f"{where}: operating point names no positive_class, which a model with "
                                f"{len(class_names)} classes needs")
        positive = 1  # medlite's binary metrics treat class index 1 as positive
    return {"threshold": threshold, "positive_index": positive, "positive_class": class_names[positive], **extra}


def read_operating_point(metadata: Mapping[str, Any], card: dict | None, class_names: list[str],
                         where: Mapping[str, str] | str = "model metadata") -> dict | None:
    """The decision threshold the file carries, or None when it carries none.

    `metadata`: the file's metadata and sidecar keys; `card`: the model card; `where`: the file each
    source came from (a mapping from key, or `card.operating_point`, to a path; or one path for
    all), named in the error. A stored value may be a bare number (binary models: class 1) or
    {"threshold": t, "positive_class": name and/or "positive_index": i, "rule": ...}. Every
    present source must be usable; the first is returned, with `source` and `file` saying where
    it came from. Without class names (no preprocessing spec) there is nothing to decide on: None.
    """
    if not class_names:
        return None
    candidates = [(k, metadata.get(k)) for k in OPERATING_POINT_KEYS]
    if isinstance(card, dict):
        candidates.append((CARD_SOURCE, card.get("operating_point")))
    found = []
    for source, raw in candidates:
        if raw is None:
            continue
        origin = where if isinstance(where, str) else where.get(source, "model metadata")
        parsed = _parse(json_value(raw), f"{origin} ({source})", class_names)
        found.append({**parsed, "source": source, "file": str(origin)})
    return found[0] if found else None


def decide_labels(probs: np.ndarray, op: dict | None, class_names: list[str]) -> np.ndarray:
    """Multi-hot decisions (N, K uint8) of a multi-label model: each label at its stored threshold
    (`op["thresholds"]`), or at 0.5 without an operating point (MedMNIST's rule)."""
    cut = np.array([op["thresholds"][n] for n in class_names] if op else [0.5] * len(class_names), dtype=np.float64)
    return (np.asarray(probs) >= cut[None, :]).astype(np.uint8)


def decide(probs: np.ndarray, index: int, threshold: float) -> np.ndarray:
    """Class per row: `index` when its probability >= threshold, else the most probable other class.

    The one decision rule at an operating point: the evaluation's predictions file and every
    deployed-file consumer (`Artifact.decide`) apply it.
    """
    others = np.array(probs, dtype=np.float64, copy=True)
    others[:, index] = -np.inf
    return np.where(np.asarray(probs)[:, index] >= threshold, index, others.argmax(1))
