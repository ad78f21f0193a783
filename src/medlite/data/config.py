"""The recipe's `data` section: keys every source shares, and the dispatch to a source's own model.

pydantic only (no torch, no scikit-learn): `medlite.recipe` imports this module. A data source subclasses
`DataConfig` with its own keys and `source: Literal["<name>"]`, and registers that model with its
loader in `medlite.data.registry`. Validating a `data` section looks `source` up in the registry
and validates the section against that source's model, so a new source adds its keys in its own
module and nothing here changes.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, TypeAdapter, ValidationError, WrapValidator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from medlite.config_base import Strict
from medlite.data.registry import SOURCES, known_sources, source_spec

DEFAULT_SOURCE = "medmnist"


class SplitRatios(Strict):
    """Ratios used when a source has no split of its own (a flat image folder, arrays without val/test)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class FoldConfig(Strict):
    """One fold of a seeded stratified k-fold (a study sets `index` per trial).

    Sources with a test split (MedMNIST, pre-split folders): the folds cover train+val and fold
    `index` is the validation part; the test split stays held out. A flat image folder: the folds
    cover every image, fold `index` is the test part, and the rest is split into train/val.
    With groups (patients, lesions) every group lies in one fold.
    """

    k: int = Field(5, ge=2, le=100)
    index: int = Field(0, ge=0)
    seed: int = Field(0, description="seed of the partition (the same for every trial, so comparisons are paired)")

    @model_validator(mode="after")
    def _index_below_k(self) -> "FoldConfig":
        if self.index >= self.k:
            raise ValueError(f"index must be below k={self.k}, got {self.index}")
        return self


# Keys of the flat data section before sources had models of their own, at the value every
# resolved recipe.yaml of that time carried. A source without such a key drops it when it holds
# that value (old run directories stay readable); any other value is an unknown key, as it should be.
_LEGACY_DEFAULTS: dict[str, Any] = {"flag": "breastmnist", "size": 28, "root": None, "class_map": None, "skip_bad": False}


class DataConfig(Strict):
    """Keys every data source shares. `DataConfig(source=..., ...)` builds that source's model."""

    source: str = Field(DEFAULT_SOURCE, min_length=1, description="a registered data source (medlite.data.registry)")
    image_size: int | None = Field(None, ge=8, le=1024, description="model input size; default: the data's own size")
    channels: Literal[1, 3] | None = Field(None, description="model input channels; default: the data's own")
    split: SplitRatios = SplitRatios()
    limit: int | None = Field(None, ge=2, description="cap on images per split, stratified (quick experiments, tests)")
    fold: FoldConfig | None = Field(None, description="use one fold of a stratified k-fold (cross-validation)")
    allow_group_leakage: bool = Field(
        False, description="accept a given split whose groups (patients, lesions) cross splits; the dataset then carries a warning"
    )
    augment: Literal["none", "light", "medium"] = "light"
    balance: Literal["none", "class_weights", "sampler"] = Field(
        "none", description="class-imbalance handling: weighted loss or balanced sampling"
    )
    mean: float = 0.5
    std: float = Field(0.5, gt=0)

    def __new__(cls, *args: Any, **data: Any) -> "DataConfig":
        # `DataConfig(source="folder", root=...)` is the section of that source: the registered
        # subclass is built instead (Python then runs its __init__, which validates once).
        if cls is DataConfig:
            cls = source_config(data.get("source", DEFAULT_SOURCE))
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> "DataConfig":
        """On DataConfig itself: validate against the model of the source `obj` names."""
        if cls is DataConfig:
            return _SECTION.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    def declared_task(self) -> str | None:
        """The task ('multiclass', 'multilabel') this section names before any data is read, where
        the source knows it from the section alone (a MedMNIST flag); None: known once read. Lets
        the pipeline refuse what it cannot train before a download."""
        return None

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            stale = [k for k, v in _LEGACY_DEFAULTS.items() if k in data and k not in cls.model_fields and data[k] == v]
            if stale:
                data = {k: v for k, v in data.items() if k not in stale}
        return data


def source_config(name: str) -> type[DataConfig]:
    """The registered config model of data source `name` (a DataError lists the known ones)."""
    return source_spec(name).config


def _source_error(message: str, name: Any) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError("unknown_source", message.replace("{", "{{").replace("}", "}}")),
                              loc=("source",), input=name)
    return ValidationError.from_exception_data("DataConfig", [detail])


def _validate_section(value: Any, handler: Any) -> DataConfig:
    """Validate a `data` mapping against the model its `source` registered (default: medmnist)."""
    if isinstance(value, DataConfig) and type(value) is not DataConfig:
        return value
    if not isinstance(value, dict):
        return handler(value)  # pydantic's own "must be a mapping" error
    name = value.get("source", DEFAULT_SOURCE)
    if not isinstance(name, str):
        raise _source_error(f"must be text naming a data source ({', '.join(known_sources())})", name)
    if name not in known_sources():
        hint = difflib.get_close_matches(name, known_sources(), n=1)
        raise _source_error(
            f"unknown data source {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known: {', '.join(known_sources())}", name,
        )
    return source_config(name).model_validate(value)


# The annotation of `Recipe.data`: introspection sees the shared keys (DataConfig), validation
# dispatches on `source`, and dumping writes every key of the source's own model.
DataSection = Annotated[SerializeAsAny[DataConfig], WrapValidator(_validate_section)]
_SECTION = TypeAdapter(DataSection)


def all_source_keys() -> list[str]:
    """Every key any registered source accepts (for did-you-mean hints)."""
    known_sources()  # the built-in sources registered
    return sorted({key for spec in SOURCES.values() for key in spec.config.model_fields})


def source_keys_owner(key: str) -> str:
    """The sources that have `key` ('medmnist', 'folder or table'); empty when none has it."""
    owners = [name for name in known_sources() if key in SOURCES[name].config.model_fields and key not in DataConfig.model_fields]
    return " or ".join(owners)


def canonical_data(section: Any) -> dict | None:
    """A recorded data section (e.g. a run marker's, possibly written before sources had models of
    their own) as the current schema dumps it; None when it no longer validates. Two records name
    the same data when their canonical forms are equal."""
    if not isinstance(section, dict):
        return None
    try:
        return DataConfig.model_validate(section).model_dump(mode="json")
    except (ValidationError, ValueError):
        return None
