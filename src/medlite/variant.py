"""What stages and the pipeline share: the `Variant` (one model the pipeline made, with its
lineage as data) and the stage `Context`. Stages and the pipeline both import this module, so
neither imports the other.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from medlite.recipe import Recipe
from medlite.runstate import RunDir, sha256


@dataclass
class Variant:
    name: str
    parent: str | None
    stage: str
    arch: str
    teachers: list[str] = field(default_factory=list)  # the variants it was distilled from (lineage as data)
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
        self.cached_stages: list[str] = []
        self.device = "cpu"
        self._hashes: dict[tuple, str] = {}

    # -- helpers used by stages ---------------------------------------------------------
    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[stage]` (stages of one kind add up)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - start, 3)

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

    def load_variant_model(self, variant: Variant):
        """The PyTorch module behind a trained variant, from its safetensors checkpoint."""
        from medlite.models.weights import load_exact

        return load_exact(self.build_model(variant.arch), self.run.root / variant.checkpoint)

    def reuse(self, stage: str, key: str, announce: str | None = None) -> dict | None:
        """The facts an earlier run recorded for this stage, if still valid (counted as reused), else None."""
        facts = self.run.cached(stage, key)
        if facts is not None:
            self.cached_stages.append(stage)
            if announce:
                self.say(f"{stage}: unchanged, using {announce}")
        return facts

    def artifact_hash(self, variant: Variant) -> str:
        """Content hash of a variant's artifact, memoised by (size, mtime): stage keys ask for it often."""
        path = self.run.root / (variant.file or variant.checkpoint)
        stat = path.stat()
        memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._hashes:
            self._hashes[memo_key] = sha256(path)
        return self._hashes[memo_key]
