"""The recipe: one YAML file that describes a whole medlite job.

This module is the single source of defaults. It imports nothing heavy, so
`medlite --help`, `medlite recipes` and recipe validation stay instant.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medlite.distill.config import KDConfig, DistillConfig as _DistillConfig
from medlite.errors import UsageError


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitRatios(_Strict):
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


class DataConfig(_Strict):
    source: Literal["medmnist", "folder", "arrays"] = "medmnist"
    flag: str = Field("breastmnist", description="MedMNIST flag, e.g. breastmnist, pneumoniamnist")
    size: Literal[28, 64, 128, 224] = Field(28, description="MedMNIST image size (the file to read)")
    root: str | None = Field(None, description="folder (source=folder) or directory of .npy files (source=arrays)")
    image_size: int | None = Field(None, ge=8, le=1024, description="model input size; default: the data's own size")
    channels: Literal[1, 3] | None = Field(None, description="model input channels; default: the data's own")
    split: SplitRatios = SplitRatios()
    class_map: dict[str, str] | None = Field(
        None, description="rename classes (folder name -> class name), e.g. to reconcile splits"
    )
    skip_bad: bool = Field(False, description="skip unreadable images (counted in the summary) instead of failing")
    limit: int | None = Field(None, ge=2, description="cap on images per split, stratified (quick experiments, tests)")
    augment: Literal["none", "light", "medium"] = "light"
    balance: Literal["none", "class_weights", "sampler"] = Field(
        "none", description="class-imbalance handling: weighted loss or balanced sampling"
    )
    mean: float = 0.5
    std: float = Field(0.5, gt=0)

    @field_validator("flag")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class TrainConfig(_Strict):
    arch: str
    epochs: int = Field(10, ge=0, le=10_000)
    pretrained: str | None = Field(None, description="local .safetensors / timm checkpoint to start from")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1, description="epochs between lr drops (schedule=step)")
    batch_size: int = Field(64, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


# The distillation section: a union of per-method configs chosen by `distill.method` (see medlite.distill).
DistillConfig = _DistillConfig


class EvaluateConfig(_Strict):
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap resamples for confidence intervals")
    confidence: float = Field(0.95, gt=0, lt=1)
    ece_bins: int = Field(15, ge=2)
    batch_size: int = Field(256, ge=1)


# -- compression (pruning, quantization) -------------------------------------------------

COMPRESS_METHODS = ("prune_structured", "prune_unstructured", "int8_dynamic", "int8_static", "int8_qat")


class FineTune(_Strict):
    epochs: int = Field(3, ge=0)
    lr: float = Field(5e-4, gt=0)
    distill: bool = Field(True, description="fine-tune with the teacher's distillation loss (the teacher's own variants distil from the uncompressed teacher)")


class PruneStructuredConfig(FineTune):
    # 30% of the channels of every layer: about half the MACs (they scale with in x out channels).
    ratio: float = Field(0.3, gt=0, lt=1, description="fraction of channels removed")
    epochs: int = Field(15, ge=0)
    lr: float = Field(1e-3, gt=0)
    importance: Literal["l1", "l2", "random", "taylor"] = "l1"
    ignore_layers: list[str] = Field(default_factory=list, description="module names never pruned")
    global_pruning: bool = False


class PruneUnstructuredConfig(FineTune):
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    final_sparsity: float = Field(0.5, gt=0, lt=1)
    scope: Literal["global", "layer"] = "global"

    @model_validator(mode="after")
    def _ramp_up(self) -> "PruneUnstructuredConfig":
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed final_sparsity")
        return self


class Int8StaticConfig(_Strict):
    calibration_images: int = Field(256, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    percentile: float = Field(99.999, gt=90, le=100)


class Int8QatConfig(FineTune):
    # QAT starts from a trained network: a small learning rate keeps it near the float optimum.
    lr: float = Field(1e-4, gt=0)
    calibration_images: int = Field(256, ge=1)


class CompressConfig(_Strict):
    targets: list[str] = Field(default_factory=lambda: ["teacher", "student_kd"])
    methods: list[str] = Field(default_factory=list)
    quantize_pruned: bool = Field(True, description="also quantize (int8_static) each structured-pruned variant")
    prune_structured: PruneStructuredConfig = PruneStructuredConfig()
    prune_unstructured: PruneUnstructuredConfig = PruneUnstructuredConfig()
    int8_static: Int8StaticConfig = Int8StaticConfig()
    int8_qat: Int8QatConfig = Int8QatConfig()

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method not in COMPRESS_METHODS:
                hint = difflib.get_close_matches(method, COMPRESS_METHODS, n=1)
                raise ValueError(
                    f"unknown method {method!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else f"; choose from {', '.join(COMPRESS_METHODS)}")
                )
        return methods


class BenchConfig(_Strict):
    enabled: bool = False
    threads: list[int] = Field(default_factory=lambda: [1, 0], description="thread counts; 0 = all cores")
    warmup: int = Field(10, ge=0)
    iterations: int = Field(200, ge=1)
    time_budget_s: float = Field(2.0, gt=0, description="per measurement; stops early when spent")
    throughput_batch: int = Field(32, ge=1)
    reference: bool = Field(True, description="also time each base model in PyTorch eager fp32")


class Recipe(_Strict):
    name: str = Field("medlite", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    teacher: TrainConfig = TrainConfig(arch="small_pooled_resnet18")
    student: TrainConfig = TrainConfig(arch="medlite_dsconv", lr=3e-3)
    teachers: list[TrainConfig] | None = Field(
        None, min_length=1, description="several teachers (an arch name or a teacher section each); the student distils from their ensemble"
    )
    assistants: list[TrainConfig] = Field(
        default_factory=list, description="teacher -> assistant 1 -> ... -> student, largest first (an arch name or a section each)"
    )
    distill: DistillConfig = KDConfig()

    @field_validator("teachers", "assistants", mode="before")
    @classmethod
    def _arch_names(cls, value: Any, info) -> Any:
        """`[resnet18, resnet34]` is short for `[{arch: resnet18}, {arch: resnet34}]`; assistants train like the student."""
        if not isinstance(value, list):
            return value
        base = {} if info.field_name == "teachers" else {"lr": 3e-3}
        return [dict(base, arch=v) if isinstance(v, str) else v for v in value]

    @model_validator(mode="after")
    def _one_teacher_form(self) -> "Recipe":
        """With `teachers:`, `teacher` is the first of them (a resolved recipe.yaml states both, equal)."""
        if self.teachers is not None:
            if "teacher" in self.model_fields_set and self.teacher != self.teachers[0]:
                raise ValueError("give either teacher: (one) or teachers: (several), not both")
            self.__dict__["teacher"] = self.teachers[0]  # bypasses validate_assignment (no re-validation loop)
        return self
    evaluate: EvaluateConfig = EvaluateConfig()
    compress: CompressConfig = CompressConfig()
    bench: BenchConfig = BenchConfig()


# -- loading --------------------------------------------------------------------------


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names mapped to their files, shipped inside the package."""
    folder = resources.files("medlite") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def describe_builtin(path: Path) -> str:
    """The first comment line of a built-in recipe: its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


DEFAULT_RECIPE = "breastmnist"


def resolve_recipe_path(recipe: str | None) -> Path:
    """A YAML path or the name of a built-in recipe (none: the default)."""
    if recipe is None:
        recipe = DEFAULT_RECIPE
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"{recipe}: recipe file not found")
        return path
    known = builtin_recipes()
    if recipe in known:
        return known[recipe]
    hint = difflib.get_close_matches(recipe, list(known), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise UsageError(f"unknown recipe {recipe!r}{suggestion}; built-in recipes: {', '.join(sorted(known))}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`teacher.epochs=5` -> (['teacher', 'epochs'], 5). The value is read as YAML, then typed by the schema."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE, e.g. teacher.epochs=5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UsageError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    if first["type"] == "union_tag_invalid":  # distill.method names no registered method
        tag, expected = first["ctx"]["tag"], first["ctx"]["expected_tags"]
        hint = difflib.get_close_matches(str(tag), [t.strip(" '") for t in expected.split(",")], n=1)
        return (f"{source}: {'.'.join(map(str, loc))}.method: unknown method {tag!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; choose from {expected}"))
    if len(loc) > 1 and loc[0] == "distill":
        del loc[1]  # the union's tag (the method name) is not a key the user wrote
    key = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {key}: {first['msg']}{shown}"


def load_recipe(recipe: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every fault becomes a one-line UsageError."""
    path = resolve_recipe_path(recipe)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}:{where} malformed YAML ({getattr(err, 'problem', None) or err})") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: a recipe must be a mapping of keys, got {type(tree).__name__}")
    tree.setdefault("name", path.stem)
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise UsageError(_format_error(str(path), err)) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
