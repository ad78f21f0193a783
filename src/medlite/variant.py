"""What stages and the pipeline share: the `Variant` (one model the pipeline made, with its
lineage as data) and the stage `Context`. Stages and the pipeline both import this module, so
neither imports the other.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from medlite.recipe import Recipe
from medlite.runstate import RunDir, fingerprint, sha256

# Bump a stage kind's number whenever what it produces changes for the same inputs (a new loss,
# a changed exporter, new facts): its old records then no longer match and the stage is redone.
# Compression methods carry theirs in `medlite.compress.registry.MethodSpec.schema`.
# train 3: distillation methods from the registry; the scratch baseline of a logit method on fixed views.
STAGE_SCHEMAS: dict[str, int] = {"train": 3, "export": 1, "evaluate": 1, "bench": 2, "ensemble": 1}


def stage_key(kind: str, *parts, schema: int | None = None) -> str:
    """The fingerprint a stage is cached under: its inputs, medlite's version and the stage's schema."""
    from medlite import __version__

    if schema is None:
        if kind not in STAGE_SCHEMAS:
            raise KeyError(f"stage kind {kind!r} has no schema version in medlite.variant.STAGE_SCHEMAS")
        schema = STAGE_SCHEMAS[kind]
    return fingerprint(kind, {"medlite": __version__, "schema": schema}, *parts)


@dataclass
class Variant:
    name: str
    parent: str | None
    stage: str
    arch: str
    teachers: list[str] = field(default_factory=list)  # the variants it was distilled from (lineage as data)
    train_section: str | None = None  # the recipe section (a TrainConfig) it was trained with: "teacher", ...
    format: str = "onnx-fp32"
    file: str | None = None  # the deployable artifact, relative to the run directory
    checkpoint: str | None = None  # safetensors weights (models trained in PyTorch)
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    file_bytes: int | None = None
    gzip_bytes: int | None = None
    sparsity: float | None = None
    runtime: str = "onnxruntime"
    export: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    compress: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    val_metrics: dict = field(default_factory=dict)  # headline metrics on the validation split (selection)
    bench: dict = field(default_factory=dict)
    # What did not go as the name says (a fallback taken, a step skipped): printed, reported, kept.
    warnings: list[str] = field(default_factory=list)
    explain: dict = field(default_factory=dict)  # maps' faithfulness and agreement (medlite.explain)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Variant":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Context:
    """What every stage needs: the recipe, the data, the run directory, the variants so far."""

    def __init__(self, recipe: Recipe, run: RunDir, data_root: Path, say: Callable[[str], None], progress: bool | None):
        self.recipe = recipe
        self.run = run
        self.data_root = data_root
        self.say = say
        self.progress = progress
        self.dataset = None
        self.variants: dict[str, Variant] = {}
        self.timings: dict[str, float] = {}
        self.reused_timings: dict[str, float] = {}  # the part of `timings` measured by the runs that made reused stages
        self._pending: dict[str, float] = {}  # seconds timed since the last reuse()/store(): the stage under way
        self.cached_stages: list[str] = []
        self.skipped: list[dict] = []  # variants a stage could not make: {"name", "reason", ...}
        self.device = "cpu"
        self._hashes: dict[tuple, str] = {}
        self._probabilities: dict[tuple, Any] = {}

    # -- helpers used by stages ---------------------------------------------------------
    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[stage]` (stages of one kind add up)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)
            self._pending[stage] = self._pending.get(stage, 0.0) + seconds

    def add(self, variant: Variant) -> Variant:
        self.variants[variant.name] = variant
        return variant

    def example_input(self):
        import torch

        spec = self.dataset.preprocess
        return torch.randn(1, spec.channels, spec.image_size, spec.image_size)

    def build_model(self, arch: str, pretrained: str | None = None):
        """A fresh model, initialised from the recipe seed (the scratch and KD students start identical)."""
        import torch

        from medlite.models import create

        torch.manual_seed(self.recipe.seed)
        d = self.dataset
        return create(arch, d.num_classes, d.channels, d.image_size, pretrained=pretrained)

    def variant_root(self, variant: Variant) -> Variant:
        """The trained variant a compressed one descends from (itself when it was trained)."""
        seen = set()
        while variant.train_section is None and variant.parent in self.variants and variant.name not in seen:
            seen.add(variant.name)
            variant = self.variants[variant.parent]
        return variant

    def load_variant_model(self, variant: Variant):
        """The PyTorch module behind a variant, from its safetensors checkpoint.

        A structured-pruned checkpoint (metadata `structure: pruned`) is rebuilt at its saved
        layer widths (`medlite.compress.prune.load_pruned_state`): tensors only, no pickle.
        """
        from medlite.models.weights import load_exact, read_metadata

        if variant.checkpoint is None:
            raise ValueError(f"variant {variant.name!r} has no PyTorch checkpoint (format {variant.format})")
        path = self.run.root / variant.checkpoint
        model = self.build_model(variant.arch)
        if read_metadata(path).get("structure") == "pruned":
            from safetensors.torch import load_file

            from medlite.compress.prune import load_pruned_state

            return load_pruned_state(model, load_file(str(path)))
        return load_exact(model, path)

    def reuse(self, stage: str, key: str, announce: str | None = None) -> dict | None:
        """The facts an earlier run recorded for this stage, if still valid (counted as reused), else None.

        Every cached stage calls this first, so it also starts the stage's timing; a reused stage
        brings back the seconds the run that made it spent (`timings`, and `reused_timings`).
        """
        self._pending = {}
        facts = self.run.cached(stage, key)
        if facts is not None:
            facts = dict(facts)
            for bucket, seconds in (facts.pop("_timing", None) or {}).items():
                self.timings[bucket] = round(self.timings.get(bucket, 0.0) + seconds, 3)
                self.reused_timings[bucket] = round(self.reused_timings.get(bucket, 0.0) + seconds, 3)
            self.cached_stages.append(stage)
            if announce:
                self.say(f"{stage}: unchanged, using {announce}")
        return facts

    def store(self, stage: str, key: str, outputs: list[Path], facts: dict) -> None:
        """Record a finished stage, with the seconds it took (restored when a rerun reuses it)."""
        timing = {bucket: round(seconds, 3) for bucket, seconds in self._pending.items()}
        self._pending = {}
        self.run.store(stage, key, outputs, {**facts, "_timing": timing})

    def warn(self, variant: Variant, message: str) -> None:
        """Say it now and keep it with the variant (results.json, the table, the report)."""
        if message not in variant.warnings:
            variant.warnings.append(message)
        self.say(f"{variant.name}: warning: {message}")

    def probabilities(self, variant: Variant, split_name: str):
        """Class probabilities of the variant's deployed file on a split, run in its runtime once per
        process: the evaluate stage (metrics) and the predict stage (predictions file, operating
        point) both read them. Keyed by the artifact's content hash, which writing the operating
        point into the file does not change."""
        key = (self.artifact_hash(variant), variant.runtime, split_name)
        if key not in self._probabilities:
            from medlite.evaluate import predict_artifact

            split = self.dataset.splits[split_name]
            self._probabilities[key] = predict_artifact(self.run.root / variant.file, split.images, self.dataset.preprocess,
                                                        self.recipe.evaluate.batch_size, variant.runtime)
        return self._probabilities[key]

    def artifact_hash(self, variant: Variant) -> str:
        """Content hash of a variant's artifact, memoised by (size, mtime): stage keys ask for it often."""
        path = self.run.root / (variant.file or variant.checkpoint)
        stat = path.stat()
        memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._hashes:
            from medlite.export.onnx import content_hash  # blind to the operating-point metadata

            self._hashes[memo_key] = content_hash(path)
        return self._hashes[memo_key]
