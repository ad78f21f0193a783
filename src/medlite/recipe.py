"""The recipe: one YAML file that describes a whole medlite job.

This module is the single source of defaults. It imports nothing heavy, so
`medlite --help`, `medlite recipes` and recipe validation stay instant.
"""

from __future__ import annotations

import copy
import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, create_model, field_validator, model_serializer, model_validator

from medlite.config_base import SECTION_ANNOTATIONS, Strict, is_section
# The data section: keys every source shares (DataConfig), validated against the model of the source
# it names (medlite.data.registry). FoldConfig and SplitRatios are re-exported for older imports.
from medlite.data.config import (  # noqa: F401
    DEFAULT_SOURCE, DataConfig, DataSection, FoldConfig, SplitRatios, all_source_keys, source_config, source_keys_owner,
)
from medlite.distill.config import CONFIGS as DISTILL_CONFIGS, MethodConfig as _MethodConfigBase, KDConfig, DistillConfig as _DistillConfig
from medlite.compress import registry as compress_registry
from medlite.errors import UsageError
from medlite.runstate import fingerprint
from medlite.export.config import ExportConfig
from medlite.explain.config import ExplainConfig


_Strict = Strict  # the base of every section (medlite.config_base)
SECTION_ANNOTATIONS.append(_DistillConfig)


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
    loss: Literal["cross_entropy", "bce", "asymmetric"] | None = Field(
        None, description="the hard-label loss; default: the data's (cross_entropy for one class per image, bce "
        "with logits for multi-label data, where asymmetric is timm's asymmetric loss with the paper's defaults; "
        "data.balance: class_weights gives either a per-label pos_weight)")

    @model_serializer(mode="wrap")
    def _unset_loss_left_out(self, handler):
        # `loss` unset is left out of every dump: stage keys, run markers and study trial records of the
        # recipes written before the key existed stay what they were (their caches stay valid).
        data = handler(self)
        if self.loss is None and isinstance(data, dict):
            data.pop("loss", None)
        return data


class TeacherConfig(TrainConfig):
    """The teacher's training: every key has a default, so a partial `teacher:` section keeps the rest."""

    arch: str = "small_pooled_resnet18"


class StudentConfig(TrainConfig):
    """The student's training: a compact network, a slightly higher learning rate than the teacher's."""

    arch: str = "medlite_dsconv"
    lr: float = Field(3e-3, gt=0, le=10)
    image_size: int | None = Field(
        None, ge=8, le=1024, description="the student's (and the scratch baseline's) input side in pixels, when lower "
        "than the data's: the teacher trains at the data's resolution and distillation gives both the same augmented "
        "image, each at its own size (a cross-resolution student); default: the data's size")


# The distillation section: a union of per-method configs chosen by `distill.method` (see medlite.distill).
DistillConfig = _DistillConfig


class OperatingPoint(_Strict):
    """A decision threshold for one class, chosen on the validation split (medlite.evaluate.operating_point).

    Exactly one rule: `sensitivity` (the highest threshold that keeps at least this sensitivity),
    `specificity` (the lowest that keeps at least this specificity) or `youden` (max sens + spec - 1).
    """

    positive_class: str | None = Field(None, description="class name; default: the second class of a binary task")
    sensitivity: float | None = Field(None, gt=0, le=1)
    specificity: float | None = Field(None, gt=0, le=1)
    youden: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> "OperatingPoint":
        rules = [self.sensitivity is not None, self.specificity is not None, self.youden]
        if sum(rules) != 1:
            raise ValueError("give exactly one of sensitivity, specificity or youden: true")
        return self


class EvaluateConfig(_Strict):
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap resamples for confidence intervals")
    confidence: float = Field(0.95, gt=0, lt=1)
    ece_bins: int = Field(15, ge=2)
    batch_size: int = Field(256, ge=1)
    operating_point: OperatingPoint | None = Field(
        None, description="e.g. {positive_class: malignant, sensitivity: 0.9}, or youden; stored in each deployed file"
    )

    @field_validator("operating_point", mode="before")
    @classmethod
    def _youden_shorthand(cls, value: Any) -> Any:
        return {"youden": True} if value == "youden" else value


# -- compression (pruning, quantization) -------------------------------------------------
# Each method's section is its own config model, registered with the method (medlite.compress.registry).


class CompressBase(_Strict):
    """Which methods run on which variants; each registered method's own section is added to this
    model from the registry (`compress_config_model`), so a method's settings live with the method."""

    targets: list[str] = Field(default_factory=lambda: ["teacher", "student_kd"])
    methods: list[str] = Field(default_factory=list, description="methods applied to each target")
    chains: list[list[str]] = Field(
        default_factory=list,
        description="methods applied in sequence to each target, e.g. [[prune_structured, int8_qat]]; "
        "default: [[prune_structured, int8_static]] when both are in methods",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_chains(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "quantize_pruned" in data:
                raise ValueError(
                    "'quantize_pruned' was removed: declare chains instead, "
                    "e.g. compress.chains: [[prune_structured, int8_static]]"
                )
            methods = data.get("methods")
            if "chains" not in data and isinstance(methods, list) and {"prune_structured", "int8_static"} <= set(methods):
                data = {**data, "chains": [["prune_structured", "int8_static"]]}
        return data

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method not in compress_registry.METHODS:
                raise ValueError(compress_registry.unknown_message(method))
        return methods

    @field_validator("chains")
    @classmethod
    def _valid_chains(cls, chains: list[list[str]]) -> list[list[str]]:
        for chain in chains:
            compress_registry.check_chain(chain)
        return chains


def compress_config_model() -> type[CompressBase]:
    """The `compress` section's model: CompressBase plus one field per registered method's config."""
    sections = {spec.config: (spec.config_model, spec.config_model())
                for spec in compress_registry.METHODS.values() if spec.config_model is not None}
    return create_model("CompressConfig", __base__=CompressBase, **sections)


CompressConfig = compress_config_model()


def _rebuild_compress_section() -> None:
    """Called by the compression registry when a method registers after this module was imported."""
    global CompressConfig
    CompressConfig = compress_config_model()
    Recipe.model_fields["compress"].annotation = CompressConfig
    Recipe.model_fields["compress"].default = CompressConfig()
    Recipe.model_rebuild(force=True)


class BenchConfig(_Strict):
    enabled: bool = False
    threads: list[int] = Field(default_factory=lambda: [1, 0], description="thread counts; 0 = all cores")
    warmup: int = Field(10, ge=0)
    iterations: int = Field(200, ge=1)
    time_budget_s: float = Field(2.0, gt=0, description="per measurement; stops early when spent")
    throughput_batch: int = Field(32, ge=1)
    reference: bool = Field(True, description="also time each base model in PyTorch eager fp32")
    layers: bool = Field(True, description="per-layer view of every file (layers/<variant>.json, the report's layer tables)")


class TelemetryConfig(_Strict):
    """What training writes to TensorBoard (`logs/<stage>/events.*`) at epochs N, 2N, ... and the last one."""

    every: int = Field(5, ge=1, description="epochs between two sets of images")
    images: int = Field(4, ge=1, le=32, description="validation images whose feature maps (and ViT attention) are drawn")
    features: bool = True
    attention: bool = Field(True, description="the last block's attention (timm ViTs; other models have none)")
    gradients: bool = Field(True, description="per-layer gradient norms over the epoch, as a figure and a histogram")


class TrainerConfig(_Strict):
    """Where training runs, handed to Lightning's Trainer. `strategy: ddp` with `devices: 2` on CPU
    trains in 2 processes (gloo); on GPUs one process per GPU (NCCL). Defaults: one device, full
    precision on CPU, bf16/16 mixed precision on a GPU (`precision: auto`), and nondeterministic
    kernels allowed (`deterministic: false`: a seed then fixes what is drawn, not every last bit)."""

    devices: int = Field(1, ge=1, le=1024, description="processes (CPU) or GPUs per node")
    num_nodes: int = Field(1, ge=1, le=1024)
    # ddp_spawn: spawned ranks on CPU too (the way several GPUs train; slower start than ddp's fork)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    deterministic: bool = Field(
        False,
        description="Lightning's Trainer(deterministic=True): deterministic kernels only, so two runs on the same "
        "machine, thread count and library versions give bitwise-identical weights (docs/reproducibility.md)",
    )
    grad_checkpointing: bool | list[Literal["teacher", "assistants", "student"]] = Field(
        False, description="recompute activations in the backward pass (timm's set_grad_checkpointing): less GPU "
        "memory, more time; true: every model trained, or the sections named ([teacher]); a model without it is refused")
    telemetry: TelemetryConfig | None = Field(
        None, description="TensorBoard images every N epochs: feature maps of validation images, ViT attention, "
        "gradient flow (e.g. {every: 5, images: 4})")

    @model_serializer(mode="wrap")
    def _new_keys_at_default_left_out(self, handler):
        # Left out of every dump at their defaults: the stage keys of runs made before they existed stay valid.
        data = handler(self)
        if isinstance(data, dict):
            if self.grad_checkpointing is False:
                data.pop("grad_checkpointing", None)
            if self.telemetry is None:
                data.pop("telemetry", None)
        return data

    def checkpoints(self, section: str) -> bool:
        """Whether models trained with recipe section `section` (teacher, teachers, assistants, student) recompute activations."""
        if isinstance(self.grad_checkpointing, bool):
            return self.grad_checkpointing
        return ("teacher" if section == "teachers" else section) in self.grad_checkpointing


class Recipe(_Strict):
    # What loading did that the user did not write (settings a recipe made for another method, dropped):
    # said by the pipeline at the start of a run. Not a recipe key.
    _notes: list[str] = PrivateAttr(default_factory=list)

    name: str = Field("medlite", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataSection = DataConfig()
    # Every default below is its class with no arguments: a partial section given as a dict is
    # validated against the class, so a setting that only a default instance carried would be lost.
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    teachers: list[TeacherConfig] | None = Field(
        None, min_length=1, description="several teachers (an arch name or a teacher section each); the student distils from their ensemble"
    )
    assistants: list[StudentConfig] = Field(
        default_factory=list, description="teacher -> assistant 1 -> ... -> student, largest first (an arch name or a section each)"
    )
    compare_students: list[StudentConfig] = Field(
        default_factory=list, description="other students distilled from the same teacher(s) with the same method, "
        "for comparison (an arch name or a student section each): variants compare_1_kd, compare_2_kd, ...")
    distill: DistillConfig = KDConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compress: CompressConfig = CompressConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()
    explain: ExplainConfig = ExplainConfig()
    trainer: TrainerConfig = TrainerConfig()

    @field_validator("teachers", "assistants", "compare_students", mode="before")
    @classmethod
    def _arch_names(cls, value: Any) -> Any:
        """`[resnet18, resnet34]` is short for `[{arch: resnet18}, {arch: resnet34}]`."""
        return [{"arch": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @model_serializer(mode="wrap")
    def _no_compare_students_left_out(self, handler):
        # `compare_students` empty is left out of every dump (as TrainConfig.loss is): the run markers, study
        # trial records and card hashes of the recipes written before the key existed stay what they were.
        data = handler(self)
        if not self.compare_students and isinstance(data, dict):
            data.pop("compare_students", None)
        return data

    @model_validator(mode="after")
    def _one_teacher_form(self) -> "Recipe":
        """With `teachers:`, `teacher` is the first of them (a resolved recipe.yaml states both, equal)."""
        if self.teachers is not None:
            if "teacher" in self.model_fields_set and self.teacher != self.teachers[0]:
                raise ValueError("give either teacher: (one) or teachers: (several), not both")
            self.__dict__["teacher"] = self.teachers[0]  # bypasses validate_assignment (no re-validation loop)
        return self


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
        if path.is_dir():
            raise UsageError(f"{recipe}: a folder, not a recipe file")
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
    if not key or any(not part.strip() for part in key.split(".")):
        raise UsageError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. "a: b: c"): the text itself, typed (and judged) by the schema
    return [part.strip() for part in key.split(".")], value


def _apply_override(tree: dict, path: list[str], value: Any, option: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise UsageError(f"{option}: {where} is not a section (it is {type(child).__name__} {child!r:.40})")
        node = child
    node[path[-1]] = value


# Report the cause before its consequences: an unknown key (often a typo of a key whose absence
# is then also reported) comes first, a missing key last.
_ERROR_ORDER = {"extra_forbidden": 0, "invalid_key": 0, "missing": 2}


def _error_key(loc: tuple) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _section_fields(loc: tuple) -> list[str]:
    """The keys allowed where `loc` points (for did-you-mean hints)."""
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not is_section(field.annotation):
            return []
        if field.annotation is _DistillConfig:  # a union: every method's keys
            return sorted({k for c in DISTILL_CONFIGS.values() for k in c.model_fields})
        model = field.annotation
    if model is DataConfig:  # validated by its source's model: every source's keys
        return all_source_keys()
    return list(model.model_fields)


def _user_loc(loc: tuple) -> tuple:
    """Drop the distill union's tag (the method name pydantic puts in the path): not a key the user wrote."""
    if len(loc) > 1 and loc[0] == "distill" and loc[1] in DISTILL_CONFIGS:
        return (loc[0], *loc[2:])
    return loc


def _describe(err: dict) -> str:
    """One validation error as `key: what is wrong (got value)`."""
    loc, kind = tuple(err["loc"]), err["type"]
    key = _error_key(loc) or "(top level)"
    if kind == "union_tag_invalid":  # distill.method names no registered method
        tag, expected = err["ctx"]["tag"], err["ctx"]["expected_tags"]
        hint = difflib.get_close_matches(str(tag), [t.strip(" '") for t in expected.split(",")], n=1)
        return (f"{key}.method: unknown method {tag!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; choose from {expected}"))
    if kind == "extra_forbidden":
        if len(loc) == 2 and loc[0] == "data" and source_keys_owner(str(loc[1])):  # another source's key
            return f"unknown key {key!r} for this data source (a key of source {source_keys_owner(str(loc[1]))})"
        hint = difflib.get_close_matches(str(loc[-1]), _section_fields(loc[:-1]), n=1)
        return f"unknown key {key!r}" + (f" (did you mean {_error_key((*loc[:-1], hint[0]))!r}?)" if hint else "")
    if kind == "invalid_key":
        return f"{_error_key(loc[:-1]) or 'top level'}: key {loc[-1]!r} must be text"
    if kind == "model_type":
        return f"{key}: must be a section (a mapping of keys), got {type(err.get('input')).__name__}"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or kind == "missing" else f" (got {_one_line(repr(value), 60)})"
    return f"{key}: {msg}{shown}"


def _source_of(loc: tuple, overrides: list[tuple[str, list[str]]], file_source: str) -> str:
    """The --set option that put the faulty value there (the last one), else the recipe file."""
    parts = [str(p) for p in loc]
    for text, path in reversed(overrides):
        n = min(len(parts), len(path))
        if n and parts[:n] == path[:n]:
            return f"--set {text}"
    return file_source


def validate_tree(tree: Any, source: str, overrides: list[str] | None = None) -> Recipe:
    """Apply `--set` overrides to a recipe tree (as read from YAML) and validate it.

    Every fault becomes a one-line UsageError that starts with where it came from (the recipe
    file, or the `--set` option that introduced it) and names the key.
    """
    if not isinstance(tree, dict):
        raise UsageError(f"{source}: a recipe must be a mapping of keys (key: value), got a {_yaml_kind(tree)}")
    tree = copy.deepcopy(tree)  # overrides must not change the caller's tree
    applied: list[tuple[str, list[str]]] = []
    file_method = (tree.get("distill") or {}).get("method", "kd") if isinstance(tree.get("distill"), dict) else "kd"
    file_dataset = _dataset_identity(tree)
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value, f"--set {text}")
        applied.append((text, keys))
    set_keys = [keys for _, keys in applied]
    notes = _switch_distill_method(tree, file_method, set_keys) + _switch_dataset(tree, file_dataset, set_keys)
    try:
        recipe = Recipe.model_validate(tree)
        recipe._notes = notes
    except ValidationError as err:
        errors = sorted(err.errors(), key=lambda e: _ERROR_ORDER.get(e["type"], 1))
        for error in errors:
            error["loc"] = _user_loc(tuple(error["loc"]))
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        where = _source_of(tuple(first["loc"]), applied, source)
        raise UsageError(_one_line(f"{where}: {_describe(first)}{more}", 300)) from None
    except (RecursionError, TypeError, ValueError) as err:  # e.g. a YAML alias that contains itself
        raise UsageError(f"{source}: cannot read the recipe ({_one_line(err, 100)})") from None
    for key, cfg in _trained_models(recipe):
        if cfg.epochs == 0 and not cfg.pretrained:
            where = _source_of(tuple(key.split(".")) + ("epochs",), applied, source)
            raise UsageError(
                f"{where}: {key}.epochs=0 with no {key}.pretrained: the {key.split('.')[0].rstrip('s')} would be "
                "deployed untrained (random weights); give epochs >= 1, or pretrained weights to start from")
    return recipe


def _trained_models(recipe: Recipe) -> list[tuple[str, TrainConfig]]:
    """Every model the recipe trains, by the key that configures it."""
    teachers = [(f"teachers.{i}", t) for i, t in enumerate(recipe.teachers)] if recipe.teachers else [("teacher", recipe.teacher)]
    return [*teachers, *((f"assistants.{i}", a) for i, a in enumerate(recipe.assistants)), ("student", recipe.student),
            *((f"compare_students.{i}", c) for i, c in enumerate(recipe.compare_students))]


def _switch_distill_method(tree: dict, file_method: str, set_keys: list[list[str]]) -> list[str]:
    """`--set distill.method=X` on a recipe written for another method: the new method starts from its own
    defaults. The recipe file's method-specific distill keys are dropped (and said); keys the user set
    with --set are kept, so one that does not apply is still an error naming it."""
    distill = tree.get("distill")
    if not isinstance(distill, dict) or ["distill", "method"] not in set_keys:
        return []
    method = distill.get("method")
    if method == file_method or method not in DISTILL_CONFIGS:
        return []
    shared = _MethodConfigBase.model_fields  # keys every method has (scratch_baseline, teacher_weights, ...)
    user = {keys[1] for keys in set_keys if len(keys) > 1 and keys[0] == "distill"}
    # Every method-specific key the file set was chosen for its method (KD's alpha is not DKD's alpha).
    dropped = [k for k in list(distill) if k != "method" and k not in shared and k not in user]
    # A shared key the file set that the new method cannot take: DKD splits its loss on each image's one
    # label, so the file's mixup (two labels per image) goes too.
    if DISTILL_CONFIGS[method].uses_labels and distill.get("mixup") and "mixup" not in user:
        dropped.append("mixup")
    for key in dropped:
        del distill[key]
    return [f"distill.method={method}: dropped {', '.join(f'distill.{k}' for k in dropped)} "
            f"(settings of {file_method}, not of {method}); {method} uses its own defaults"] if dropped else []


# What names the dataset a recipe reads, per source (the rest of `data` says how it is read).
_DATASET_KEYS = {"medmnist": ("flag",), "folder": ("root",), "arrays": ("root",), "table": ("table", "root")}
# `data` keys that name the classes (or files) of one dataset: meaningless for another.
_CLASS_NAMING_DATA_KEYS = ("class_map", "classes", "labels", "no_finding", "groups")


def _dataset_identity(tree: dict) -> tuple | None:
    """(source, the keys naming its dataset) of a recipe tree; None when `data` is not a section."""
    data = tree.get("data", {})
    if not isinstance(data, dict):
        return None
    source = data.get("source", DEFAULT_SOURCE)
    defaults = {"flag": "breastmnist"} if source == "medmnist" else {}  # MedMNISTData's default flag
    return (source, *((k, data.get(k, defaults.get(k))) for k in _DATASET_KEYS.get(str(source), ("root",))))


def _user_set(set_keys: list[list[str]], path: list[str]) -> bool:
    """Did a --set write `path`, a key inside it, or a section holding it?"""
    return any(keys[: len(path)] == path or path[: len(keys)] == keys for keys in set_keys)


def _switch_dataset(tree: dict, file_dataset: tuple | None, set_keys: list[list[str]]) -> list[str]:
    """`--set data.flag=X` (or data.source / data.root / data.table) on a recipe written for another
    dataset: the recipe file's settings that name that dataset's classes (`evaluate.operating_point`,
    `data.class_map`, ...) and its source's own keys a new source lacks are dropped (and said); keys
    the user set with --set are kept, so one that does not apply is still an error naming it."""
    now = _dataset_identity(tree)
    if file_dataset is None or now is None or now == file_dataset or not any(k[:1] == ["data"] for k in set_keys):
        return []
    dropped: list[str] = []
    evaluate = tree.get("evaluate")
    if isinstance(evaluate, dict) and evaluate.get("operating_point") is not None \
            and not _user_set(set_keys, ["evaluate", "operating_point"]):
        del evaluate["operating_point"]  # a class and a rule chosen for the old dataset's task
        dropped.append("evaluate.operating_point")
    data = tree["data"] if isinstance(tree.get("data"), dict) else {}
    try:
        fields = set(source_config(str(now[0])).model_fields)
    except Exception:  # noqa: BLE001 - an unknown source: validation reports it, naming the key
        fields = None
    for key in list(data):
        if _user_set(set_keys, ["data", key]):
            continue
        if key in _CLASS_NAMING_DATA_KEYS or (fields is not None and key not in fields):
            del data[key]
            dropped.append(f"data.{key}")
    if not dropped:
        return []

    def named(identity: tuple) -> str:
        return "/".join(str(v) for _, v in identity[1:] if v is not None) or str(identity[0])

    return [f"data: the recipe file's dataset {named(file_dataset)!r} switched to {named(now)!r}: dropped "
            f"{', '.join(dropped)} (settings for {named(file_dataset)}, not for {named(now)})"]


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "text", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping gives one key twice: PyYAML would keep the last silently (`teacher:` twice keeps
    only the second section)."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__(None, None, f"key {key!r} given twice (line {first.line + 1} and line {second.line + 1})", second)
        self.key, self.first_line, self.second_line = key, first.line + 1, second.line + 1


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (merge keys `<<` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise DuplicateKey(key, first, key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing duplicate keys (DuplicateKey, a yaml.YAMLError, names both lines)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def check_yaml_file(path: Path, what: str = "file") -> None:
    """UsageError naming the file, the key and both lines when a YAML file gives one key twice."""
    try:
        load_yaml(Path(path).read_text())
    except DuplicateKey as err:
        raise UsageError(f"{path}: {err.problem}; keep one") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass  # not this check's to report: the file's own reader names those faults


_MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; a bigger file is the wrong file


def read_recipe_file(path: Path) -> dict:
    """The YAML mapping in a recipe file; every fault a one-line UsageError naming the file."""
    try:
        if path.stat().st_size > _MAX_RECIPE_BYTES:
            raise UsageError(f"{path}: {path.stat().st_size} bytes is too large for a recipe (a YAML file of settings)")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not a text (UTF-8) recipe file (byte {err.start} is {err.object[err.start]:#04x})") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        tree = load_yaml(text)
    except DuplicateKey as err:
        raise UsageError(f"{path}: {err.problem}; keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        if isinstance(err, yaml.reader.ReaderError):  # a control character: say which and where
            char = err.character
            problem = f"{err.reason}: {char:#04x} at character {err.position}" if isinstance(char, int) else err.reason
        raise UsageError(_one_line(f"{path}:{where} malformed YAML ({problem})", 200)) from None
    except RecursionError:
        raise UsageError(f"{path}: malformed YAML (nested too deeply)") from None
    if tree is None:
        raise UsageError(
            f"{path}: empty recipe (no keys); give at least one key, e.g. 'data: {{flag: breastmnist}}', "
            "or run without a RECIPE for the built-in default"
        )
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: a recipe must be a mapping of keys (key: value), got a {_yaml_kind(tree)}")
    return tree


def load_recipe(recipe: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every fault becomes a one-line UsageError."""
    path = resolve_recipe_path(recipe)
    tree = read_recipe_file(path)
    if "name" not in tree:
        # The file's name, made a valid run name ("my recipe.yaml" -> "my_recipe").
        tree["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("_") or "medlite"
    return validate_tree(tree, str(path), overrides)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in) as YAML; `load_recipe` reads it back equal."""
    # allow_unicode stays off: PyYAML writes U+0085 (NEL) raw, and reads it back as a line break.
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# -- run directories ----------------------------------------------------------------------


def data_identity(recipe: Recipe) -> dict:
    """What makes a run's data this data (not how it is augmented or balanced): recorded in the marker."""
    return recipe.data.model_dump(mode="json", exclude={"augment", "balance"})


def default_run_dir(recipe: Recipe, runs: Path = Path("runs")) -> Path:
    """`runs/<recipe name>`; with a short data identity appended when the data is not the built-in recipe's.

    So `--set data.source=arrays ...` on the built-in recipe never lands in (and retrains over)
    `runs/breastmnist`, while the plain default still does.
    """
    builtin = builtin_recipes().get(recipe.name)
    if builtin is None:
        return runs / recipe.name
    if data_identity(load_recipe(str(builtin))) == data_identity(recipe):
        return runs / recipe.name
    return runs / f"{recipe.name}-{recipe.data.source}-{fingerprint(data_identity(recipe))[:6]}"
