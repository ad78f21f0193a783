"""The `Variant`: one model the pipeline made, with its lineage as data.

A variant is what every consumer (evaluation, bench, explanations, the report, predict, serve)
treats alike: a name, the variant it came from (`parent`) and the ones it was distilled from
(`teachers`), the stage that made it, the deployable file and the runtime that runs it, and the
typed records the stages after it added (metrics, predictions, bench, explanations).

Stored records (`stages/*.json`, `results.json`) are read back with `Variant.from_dict`, which
refuses a key it does not know instead of dropping it; an older record layout is migrated
explicitly (`RECORD_VERSION`, `_migrate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

# 2: `train_section` became a typed TrainSection; the predict stage's facts left `metrics` (their own record).
RECORD_VERSION = 2


class RecordError(ValueError):
    """A stored variant record medlite cannot read (an unknown key, a malformed field)."""


@dataclass(frozen=True)
class TrainSection:
    """The recipe section (a TrainConfig) a variant was trained with: `teacher`, `student`,
    `teachers[0]`, `assistants[1]`. Later stages (compression fine-tunes) find their training
    settings through it, by lineage, never by the variant's name."""

    field: str
    index: int | None = None

    def resolve(self, recipe: Any) -> Any:
        cfg = getattr(recipe, self.field)
        return cfg if self.index is None else cfg[self.index]

    def __str__(self) -> str:
        return self.field if self.index is None else f"{self.field}[{self.index}]"

    def to_dict(self) -> dict:
        return {"field": self.field, "index": self.index}

    @classmethod
    def from_value(cls, value: Any) -> "TrainSection | None":
        if value is None or isinstance(value, TrainSection):
            return value
        if isinstance(value, dict) and set(value) <= {"field", "index"} and isinstance(value.get("field"), str):
            return cls(value["field"], value.get("index"))
        raise RecordError(f"train_section: expected {{'field': ..., 'index': ...}}, got {value!r}")


class Metrics(TypedDict, total=False):
    """What the evaluate stage measures on the deployed file (results.json `metrics`); the predict
    stage's `predictions` and `operating_point` are merged in when results.json is written."""

    accuracy: float
    balanced_accuracy: float
    auc: float
    f1_macro: float
    ece: float
    ci: dict
    per_class: dict
    confusion: list
    split: str
    n: int


class Prediction(TypedDict, total=False):
    """The predict stage's record: the predictions file and the operating point chosen on validation."""

    predictions: str
    operating_point: dict | None


PREDICTION_KEYS = ("predictions", "operating_point")


@dataclass
class Variant:
    name: str
    parent: str | None  # the variant it was made from (a name in the same run: lineage as data)
    stage: str  # the stage kind that made it: train, distill, ensemble, prune_structured, export.litert, ...
    arch: str
    teachers: list[str] = field(default_factory=list)  # the variants it was distilled from
    train_section: TrainSection | None = None  # the recipe section it was trained with (trained variants only)
    format: str = "onnx-fp32"
    file: str | None = None  # the deployable artifact, relative to the run directory
    checkpoint: str | None = None  # safetensors weights (models trained in PyTorch)
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    file_bytes: int | None = None
    gzip_bytes: int | None = None
    sparsity: float | None = None
    runtime: str = "onnxruntime"  # a registered runtime's name (medlite.runtime)
    export: dict = field(default_factory=dict)  # the exporter's check: max |ONNX - PyTorch|, ...
    train: dict = field(default_factory=dict)  # medlite.train.FitResult.to_dict(): epochs, best epoch, curves
    # How a trained variant was trained: views (live | bank), mixup, image size, epochs, optimizer, teachers, method.
    training: dict = field(default_factory=dict)
    compress: dict = field(default_factory=dict)  # the compression method's facts
    metrics: Metrics = field(default_factory=dict)
    val_metrics: dict = field(default_factory=dict)  # headline metrics on the validation split (selection)
    prediction: Prediction = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    # What did not go as the name says (a fallback taken, a step skipped): printed, reported, kept.
    warnings: list[str] = field(default_factory=list)
    explain: dict = field(default_factory=dict)  # maps' faithfulness and agreement (medlite.explain)
    planned: bool = False  # a dry run's placeholder: no artifact yet (never stored)

    @property
    def trained(self) -> bool:
        """Trained in PyTorch by a training stage (it records the recipe section it was trained with)."""
        return self.train_section is not None

    def reported_metrics(self) -> dict:
        """`metrics` as results.json carries them: the evaluate stage's, with the predict stage's merged in."""
        return {**self.metrics, **{k: v for k, v in self.prediction.items() if k != "operating_point" or v is not None}}

    def to_record(self) -> dict:
        """The stage-record form (read back by from_dict)."""
        data = asdict(self)
        data.pop("planned")
        data["train_section"] = self.train_section.to_dict() if self.train_section else None
        data["record_version"] = RECORD_VERSION
        return data

    def to_dict(self) -> dict:
        """The results.json form (the contract: `metrics` holds the predictions file and operating point)."""
        data = self.to_record()
        data["metrics"] = self.reported_metrics()
        del data["prediction"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Variant":
        """Read a stored record (either form); an unknown key is a RecordError naming it, never dropped."""
        data = _migrate(dict(data))
        known = {f.name for f in fields(cls)} - {"planned"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"variant {data.get('name', '?')!r}: unknown key {unknown[0]!r} in its record "
                              f"(written by a newer medlite?)")
        data["train_section"] = TrainSection.from_value(data.get("train_section"))
        try:
            return cls(**data)
        except TypeError as err:
            raise RecordError(f"variant record {data.get('name', '?')!r}: {err}") from None


def _migrate(data: dict) -> dict:
    """Bring an older record to RECORD_VERSION (each step says what changed)."""
    version = data.pop("record_version", 1)
    if version > RECORD_VERSION:
        raise RecordError(f"variant {data.get('name', '?')!r}: record version {version} is newer than this "
                          f"medlite reads ({RECORD_VERSION})")
    if version < 2:
        section = data.get("train_section")
        if isinstance(section, str):  # "teacher", "teachers.0", "assistants.1"
            head, _, index = section.partition(".")
            data["train_section"] = {"field": head, "index": int(index) if index.isdigit() else None}
    metrics = data.get("metrics") or {}
    if "prediction" not in data and any(k in metrics for k in PREDICTION_KEYS):
        # results.json form: the predict stage's facts travel inside `metrics`
        data["metrics"] = {k: v for k, v in metrics.items() if k not in PREDICTION_KEYS}
        data["prediction"] = {k: metrics[k] for k in PREDICTION_KEYS if k in metrics}
    return data


def lineage(variant: Variant, variants: dict[str, Variant]) -> list[str]:
    """The variants `variant` descends from: its parent chain and the teachers of each link, nearest first."""
    out: list[str] = []
    frontier = [variant]
    while frontier:
        current = frontier.pop(0)
        for name in [current.parent, *current.teachers]:
            if name and name not in out and name != variant.name and name in variants:
                out.append(name)
                frontier.append(variants[name])
    return out


def trained_root(variant: Variant, variants: dict[str, Variant]) -> Variant:
    """The trained variant a compressed or exported one descends from (itself when it was trained)."""
    seen = set()
    while not variant.trained and variant.parent in variants and variant.name not in seen:
        seen.add(variant.name)
        variant = variants[variant.parent]
    return variant
