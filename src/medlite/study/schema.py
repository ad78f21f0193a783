"""The study file: which recipe, which fixed overrides, which axes (grid, named list, seeds, folds),
which baseline for paired comparisons and which validation rule chooses a setting.

Strict like recipes: an unknown key, an unknown recipe key in an axis or a bad value is a one-line
UsageError naming it, raised before anything trains (every trial's recipe is validated up front).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, computed_field, field_validator,
                      model_validator)

from medlite.errors import UsageError

HEADLINE = ("auc", "accuracy", "balanced_accuracy", "f1_macro", "ece")
# The scratch student's variant name, medlite.distill.stages.SCRATCH (not imported: that module loads torch).
SCRATCH = "student_scratch"
BASELINE_OFF = "none"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Baseline(_Strict):
    """What every other (setting, variant) is compared with, on the same seeds/folds and test images.

    `setting` alone: each variant against the same variant of that setting. `variant` alone: each
    variant of a setting against that variant of the same setting (e.g. the scratch student).
    """

    setting: str | None = None
    variant: str | None = None

    @model_validator(mode="after")
    def _something(self) -> "Baseline":
        if self.setting is None and self.variant is None:
            raise ValueError("name a setting, a variant, or both")
        return self


class Select(_Strict):
    """Choose a setting by a validation metric (mean over seeds/folds); the test split is never read to choose."""

    metric: str = Field("val_auc", pattern=r"^val_(auc|accuracy|balanced_accuracy|f1_macro|ece)$")
    over: list[Literal["grid", "list"]] = Field(default_factory=lambda: ["grid", "list"])
    variant: str = Field("student_kd", description="the variant whose validation metric decides")
    mode: Literal["max", "min"] | None = Field(None, description="default: min for ece, else max")
    among: list[str] | None = Field(None, description="the settings to choose from, by name (default: every setting "
                                    "of the `over` axes); others are reported beside them, never chosen")
    report: Literal["chosen", "all"] = Field(
        "chosen", description="`chosen`: only the chosen setting meets the test split (the strict protocol); `all`: "
        "every setting's test metrics and comparisons are reported too (evidence studies), the chosen one marked, "
        "Holm-corrected over all of them")

    @property
    def key(self) -> str:
        return self.metric.removeprefix("val_")

    @property
    def direction(self) -> str:
        return self.mode or ("min" if self.key == "ece" else "max")


class Folds(_Strict):
    k: int = Field(5, ge=2, le=100)
    seed: int = 0


class Stats(_Strict):
    resamples: int = Field(2000, ge=100, le=100_000, description="paired bootstrap resamples per comparison")
    confidence: float = Field(0.95, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error rate (Holm)")


class StudySpec(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    recipe: str = "breastmnist"
    fixed: dict[str, Any] = Field(default_factory=dict, alias="set", description="fixed dotted overrides for every trial")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values (cartesian product)")
    named: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="list", description="named settings: name -> dotted overrides")
    seeds: list[int] = Field(default_factory=lambda: [0])
    folds: Folds | None = None
    variants: list[str] | None = Field(None, description="variants to tabulate (default: all)")
    baseline: Baseline | None = Field(
        None, description="what every variant is compared with; not given: student_scratch of each setting when "
        "every trial trains it; `none`: no paired comparisons")
    select: Select | None = None
    stats: Stats = Stats()
    # `baseline: none` (validated to None, so the rest of the study reads one type), and where the
    # baseline in effect came from, set by `resolve_baseline`. Neither is a study key.
    _baseline_off: bool = PrivateAttr(False)
    _baseline_origin: str | None = PrivateAttr(None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def baseline_origin(self) -> str | None:
        """"study" (the study's `baseline`), "default" (student_scratch of each setting), "off"
        (`baseline: none`), "absent" (none given and not every trial has student_scratch);
        None before `expand`. Recorded in the study document, so its notes can say which."""
        return self._baseline_origin

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_word(cls, value: Any) -> Any:
        # Runs only on a value the study gave. An empty `baseline:` reads as "no baseline" but would
        # mean "the default one", so it is an error that names both.
        if value is None:
            raise ValueError(f"empty; write `baseline: {BASELINE_OFF}` for no paired comparisons, or leave the "
                             f"key out for the default ({SCRATCH} of each setting)")
        if value == BASELINE_OFF:
            return None  # told apart from "not given" by model_fields_set (see _references)
        if not isinstance(value, (dict, Baseline)):
            raise ValueError(f"write `baseline: {BASELINE_OFF}` to turn the paired comparisons off, "
                             "or a mapping with `setting` and/or `variant`")
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        return list(range(value)) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("folds", mode="before")
    @classmethod
    def _fold_count(cls, value: Any) -> Any:
        return {"k": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give at least one seed, each once")
        return value

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: an empty list of values")
        return value

    @model_validator(mode="after")
    def _references(self) -> "StudySpec":
        self._baseline_off = "baseline" in self.model_fields_set and self.baseline is None
        clash = set(self.grid) & {k for s in self.named.values() for k in s}
        if clash:
            raise ValueError(f"keys in both grid and list: {', '.join(sorted(clash))}")
        for where, keys in (("set", list(self.fixed)), ("grid", list(self.grid)), *[(f"list.{n}", list(s)) for n, s in self.named.items()]):
            for key in keys:
                if key in ("seed", "data.fold") or key.startswith("data.fold."):
                    raise ValueError(f"{where}.{key}: use the study's `seeds` / `folds` instead")
        return self


@dataclass
class Setting:
    name: str
    overrides: dict[str, Any]
    axis: str  # "grid", "list", "grid+list" or "fixed"


@dataclass
class Trial:
    setting: str
    seed: int
    fold: int | None
    overrides: list[str]
    recipe: Any = None  # the validated medlite.recipe.Recipe
    dirname: str = ""
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.setting} seed {self.seed}" + (f" fold {self.fold}" if self.fold is not None else "")


def _short(keys: list[str]) -> dict[str, str]:
    """Display names for dotted keys: the last part when unique among the grid's keys."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def settings(spec: StudySpec) -> list[Setting]:
    grid_keys = list(spec.grid)
    short = _short(grid_keys)
    combos = [dict(zip(grid_keys, values)) for values in itertools.product(*spec.grid.values())] if grid_keys else [{}]
    items = list(spec.named.items()) or [(None, {})]
    out = []
    for list_name, list_overrides in items:
        for combo in combos:
            parts = ([list_name] if list_name else []) + [f"{short[k]}={_fmt(v)}" for k, v in combo.items()]
            axis = "+".join(a for a, on in (("grid", bool(combo)), ("list", list_name is not None)) if on) or "fixed"
            out.append(Setting(",".join(parts) or "default", {**list_overrides, **combo}, axis))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise UsageError("study: two settings get the same name; give the list entries distinct names")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:100] or "default"


def _override(key: str, value: Any) -> str:
    # JSON is YAML: the value comes back with its type (numbers stay numbers, strings stay strings).
    return f"{key}={json.dumps(value)}"


def load_study(path: Path) -> StudySpec:
    from medlite.recipe import DuplicateKey, load_yaml  # the recipe's loader: a key given twice is refused

    try:
        tree = load_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: study file not found") from None
    except DuplicateKey as err:
        raise UsageError(f"{path}: {err.problem}; keep one") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: malformed YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: a study must be a mapping of keys")
    tree.setdefault("name", Path(path).stem)
    try:
        spec = StudySpec.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise UsageError(f"{path}: unknown study key {key!r}") from None
        value = first.get("input")
        shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
        raise UsageError(f"{path}: {key}: {first['msg']}{shown}") from None
    # A relative recipe path is relative to the study file.
    recipe = Path(spec.recipe)
    if recipe.suffix in (".yaml", ".yml") and not recipe.is_absolute() and not recipe.exists():
        candidate = Path(path).parent / recipe
        if candidate.exists():
            spec.recipe = str(candidate)
    return spec


def expand(spec: StudySpec, source: str = "study") -> tuple[list[Setting], list[Trial]]:
    """Every trial (setting x seed x fold), each with its recipe validated; a fault names the study key."""
    from medlite.models import check_arch
    from medlite.recipe import load_recipe

    all_settings = settings(spec)
    if spec.baseline and spec.baseline.setting and spec.baseline.setting not in {s.name for s in all_settings}:
        raise UsageError(f"{source}: baseline.setting {spec.baseline.setting!r} is not a setting; settings: "
                         + ", ".join(s.name for s in all_settings))
    fixed = [_override(k, v) for k, v in spec.fixed.items()]
    folds = list(range(spec.folds.k)) if spec.folds else [None]
    trials: list[Trial] = []
    checked: set[str] = set()
    for setting in all_settings:
        axis = [_override(k, v) for k, v in setting.overrides.items()]
        for seed in spec.seeds:
            for fold in folds:
                extra = [f"seed={seed}"]
                if fold is not None:
                    extra.append(f"data.fold={json.dumps({'k': spec.folds.k, 'index': fold, 'seed': spec.folds.seed})}")
                overrides = fixed + axis + extra
                try:
                    recipe = load_recipe(spec.recipe, overrides)
                except UsageError as err:
                    raise UsageError(f"{source}: setting {setting.name!r}: {_study_key(str(err), spec, setting)}") from None
                for section in ("teacher", "student"):
                    arch = getattr(recipe, section).arch
                    if arch not in checked:
                        try:
                            check_arch(arch)
                        except UsageError as err:
                            raise UsageError(f"{source}: setting {setting.name!r}: {section}.arch: {err}") from None
                        checked.add(arch)
                dirname = _slug(setting.name) + f"__seed{seed}" + (f"__fold{fold}" if fold is not None else "")
                trials.append(Trial(setting.name, seed, fold, overrides, recipe, dirname, {**setting.overrides}))
    dirs = [t.dirname for t in trials]
    if len(set(dirs)) != len(dirs):
        raise UsageError(f"{source}: settings whose names differ only in punctuation; rename the list entries")
    resolve_baseline(spec, trials)
    return all_settings, trials


def resolve_baseline(spec: StudySpec, trials: list[Trial]) -> Baseline | None:
    """The baseline the paired comparisons use, stored back on `spec.baseline` (with its origin in
    `spec.baseline_origin`): the study's own; else, when every trial trains student_scratch (and
    `variants` keeps it), student_scratch of each setting, since a distillation study that has the
    fair scratch student should be read against it; none with `baseline: none`. Runs once per spec."""
    if spec._baseline_origin is not None:
        return spec.baseline
    if spec.baseline is not None:
        origin = "study"
    elif spec._baseline_off:
        origin = "off"
    elif trials and all(t.recipe.distill.scratch_baseline for t in trials) and (spec.variants is None or SCRATCH in spec.variants):
        spec.baseline, origin = Baseline(variant=SCRATCH), "default"
    else:
        origin = "absent"
    spec._baseline_origin = origin
    return spec.baseline


def _study_key(message: str, spec: StudySpec, setting: Setting) -> str:
    """Point a recipe error at the study section that set the key (set / grid / list)."""
    for key in setting.overrides:
        if repr(key) in message or f" {key}:" in message or message.endswith(key):
            where = "grid" if key in spec.grid else "list"
            return f"{where} key {key!r}: " + message.split(": ", 1)[-1]
    for key in spec.fixed:
        if repr(key) in message or f" {key}:" in message:
            return f"set key {key!r}: " + message.split(": ", 1)[-1]
    return message
