"""What a stage is given: the run's `Context`, made of the few objects it really is.

- `StageLedger` (medlite.stage): the cache protocol, timings, the dry-run plan;
- `ModelLoader`: fresh models from the recipe seed, and the PyTorch module behind a variant;
- `Inference`: a variant's deployed file run once per split in its runtime, shared by the stages
  that read its probabilities (evaluate, predict, explain);
- the run directory, the recipe, the dataset and the variants made so far.

Stages and the pipeline both import this module (and `medlite.variant`), never each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from medlite.recipe import Recipe
from medlite.runstate import RunDir
from medlite.stage import StageLedger
from medlite.variant import Variant


def _for_task(model, dataset):
    """A teacher ensemble averages what the task's outputs are: per-label sigmoids for multi-label data."""
    from medlite.models.composite import Ensemble

    if isinstance(model, Ensemble) and dataset.multilabel:
        model.multilabel = True
    return model


class ModelLoader:
    """Builds models for the run's dataset and loads variants' checkpoints (tensors only, no pickle)."""

    def __init__(self, ctx: "Context") -> None:
        self._ctx = ctx

    def example_input(self, variant: Variant | None = None):
        """One random input batch at the variant's own input size (default: the data's)."""
        import torch  # the pipeline's stages need torch; the context module itself does not

        spec = self._ctx.data_for(variant).preprocess if variant is not None else self._ctx.dataset.preprocess
        return torch.randn(1, spec.channels, spec.image_size, spec.image_size)

    def build(self, arch: str, pretrained: str | None = None, image_size: int | None = None):
        """A fresh model, initialised from the recipe seed (the scratch and KD students start identical),
        for inputs of `image_size` pixels (default: the data's)."""
        import torch

        from medlite.models import create

        torch.manual_seed(self._ctx.recipe.seed)
        d = self._ctx.dataset
        return _for_task(create(arch, d.num_classes, d.channels, image_size or d.image_size, pretrained=pretrained), d)

    def load(self, variant: Variant):
        """The PyTorch module behind a variant, from its safetensors checkpoint.

        A structured-pruned checkpoint (metadata `structure: pruned`) is rebuilt at its saved
        layer widths (`medlite.models.weights.load_pruned_state`).
        """
        from medlite.models.weights import load_checkpoint

        if variant.checkpoint is None:
            raise ValueError(f"variant {variant.name!r} has no PyTorch checkpoint (format {variant.format})")
        return load_checkpoint(self.build(variant.arch, image_size=self._ctx.input_size(variant)),
                               self._ctx.run.root / variant.checkpoint)


class Inference:
    """Class probabilities of a variant's deployed file on a split, run in its runtime once per process.

    Keyed by the artifact's content hash, which writing the operating point into the file does not change.
    """

    def __init__(self, ctx: "Context") -> None:
        self._ctx = ctx
        self._cache: dict[tuple, Any] = {}

    def probabilities(self, variant: Variant, split_name: str):
        ctx = self._ctx
        key = (ctx.ledger.artifact_hash(variant), variant.runtime, split_name)
        if key not in self._cache:
            from medlite.evaluate import predict_artifact

            data = ctx.data_for(variant)  # the images at the file's own input size
            split = data.splits[split_name]
            self._cache[key] = predict_artifact(ctx.run.root / variant.file, split.images, data.preprocess,
                                                ctx.recipe.evaluate.batch_size, variant.runtime)
        return self._cache[key]


class Context:
    """The run a stage belongs to: recipe, run directory, data, the variants so far, and its helpers."""

    def __init__(self, recipe: Recipe, run: RunDir, data_root: Path, say: Callable[[str], None],
                 progress: bool | None, *, planning: bool = False) -> None:
        self.recipe = recipe
        self.run = run
        self.data_root = data_root
        self.say = say
        self.progress = progress
        self.dataset = None
        self.device = "cpu"
        self.variants: dict[str, Variant] = {}
        self._resized: dict[int, Any] = {}  # image size -> the dataset at that size (`data_for`)
        self.skipped: list[dict] = []  # variants a stage could not make: {"name", "reason", ...}
        self.duplicates: dict | None = None  # the data's duplicate report (medlite.data.duplicates), for results.json
        self.started = 0.0  # perf_counter() when the run began (results.json `timings.total`)
        self.results: dict | None = None  # the results document, once the report step wrote it
        self.ledger = StageLedger(run, say, planning=planning)
        self.models = ModelLoader(self)
        self.inference = Inference(self)

    @property
    def planning(self) -> bool:
        """A dry run: stages are looked up, nothing is computed or written."""
        return self.ledger.planning

    def input_size(self, variant: Variant) -> int:
        """The input side in pixels of a variant's model and files: the size its trained root was trained
        at (`training.image_size`, e.g. a cross-resolution student's `student.image_size`), else the data's."""
        from medlite.variant import trained_root

        root = trained_root(variant, self.variants) if variant.name in self.variants else variant
        return int(root.training.get("image_size") or self.dataset.image_size)

    def data_for(self, variant: Variant | None):
        """The dataset as a variant's model sees it: every image at its input size (resized once, kept)."""
        size = self.dataset.image_size if variant is None else self.input_size(variant)
        if size not in self._resized:
            self._resized[size] = self.dataset.at_size(size)
        return self._resized[size]

    def add(self, variant: Variant) -> Variant:
        self.variants[variant.name] = variant
        return variant

    def warn(self, variant: Variant, message: str) -> None:
        """Say it now and keep it with the variant (results.json, the table, the report)."""
        if message not in variant.warnings:
            variant.warnings.append(message)
        self.say(f"{variant.name}: warning: {message}")
