"""medlite from Python (a notebook, a script): the command line's jobs as functions with typed results.

    import medlite
    result = medlite.run("breastmnist", out="runs/nb", overrides={"student.epochs": 5})
    result.to_pandas()                      # one row per variant: lineage, format, size, metrics
    result["student_kd"].metrics["auc"]     # a typed medlite.variant.Variant
    medlite.load("runs/nb").deployed()      # the file `medlite predict RUN_DIR` would use, and why
    medlite.study("benchmarks/busi_cv.yaml", out="runs/cv").to_pandas()
    medlite.evaluate_external("runs/nb", "pneumoniamnist", class_map={...}).to_pandas()   # external validation

Errors are the command line's, as exceptions: `medlite.UsageError` (bad input: its one-line message
names the key, value or file; the CLI's exit code 2) and `medlite.MedliteError` for the rest.
Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlite.errors import UsageError
from medlite.variant import Variant, lineage

# The columns of `RunResult.to_pandas()`: identity and lineage, the artifact, then the reported metrics.
VARIANT_COLUMNS = ("name", "parent", "stage", "arch", "format", "runtime", "params", "macs", "file", "file_bytes")
METRIC_COLUMNS = ("auc", "accuracy", "balanced_accuracy", "f1_macro", "ece")


def _override_list(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """{"student.epochs": 2, "compress.methods": []} -> ["student.epochs=2", "compress.methods=[]"] (values as
    JSON, which the recipe's YAML reads back exactly); a list of "key=value" strings passes through."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise UsageError(f"overrides: give a mapping or a list of 'key=value' strings, not the string {overrides!r}")
    return list(overrides)


def _data_root(data_root: str | Path | None) -> Path:
    from medlite.data.medmnist import default_data_root

    return Path(data_root).expanduser() if data_root else default_data_root()


@dataclass
class RunResult:
    """A finished run directory: its results document and its variants as typed records."""

    root: Path
    results: dict

    @property
    def variants(self) -> dict[str, Variant]:
        return {v["name"]: Variant.from_dict(v) for v in self.results["variants"]}

    def __getitem__(self, name: str) -> Variant:
        variants = self.variants
        if name not in variants:
            raise UsageError(f"no variant {name!r} in {self.root} (variants: {', '.join(variants)})")
        return variants[name]

    def lineage(self, name: str) -> list[str]:
        """The variants `name` descends from, nearest first (its parent chain and the teachers along it)."""
        return lineage(self[name], self.variants)

    def deployed(self) -> dict:
        """What `medlite predict RUN_DIR` would deploy: {"variant", "file", "rule"} (chosen on validation)."""
        from medlite.deploy.select import choose_variant
        from medlite.runtime import ArtifactError

        try:
            path, entry, rule = choose_variant(self.root)
        except ArtifactError as err:
            raise UsageError(str(err)) from None
        return {"variant": entry["name"], "file": path, "rule": rule}

    def to_pandas(self):
        """One row per variant: name, lineage, format, runtime, size, MACs and the reported test metrics
        (each measured on the variant's deployed file), plus its validation AUC."""
        import pandas as pd

        rows = []
        for v in self.results["variants"]:
            metrics = v.get("metrics") or {}
            row = {key: v.get(key) for key in VARIANT_COLUMNS}
            row.update({key: metrics.get(key) for key in METRIC_COLUMNS})
            row["val_auc"] = (v.get("val_metrics") or {}).get("auc")
            row["warnings"] = "; ".join(v.get("warnings") or [])
            rows.append(row)
        return pd.DataFrame(rows)


@dataclass
class StudyResult:
    """A study's document (`study.json`): trials, summary, comparisons, selection."""

    root: Path
    document: dict

    def to_pandas(self, what: str = "summary"):
        """`summary` (one row per setting and variant: mean, std and interval of each metric), `rows`
        (one per trial and variant) or `comparisons` (against the baseline)."""
        import pandas as pd

        if what == "rows":
            return pd.DataFrame(self.document["rows"])
        if what == "comparisons":
            return pd.DataFrame(self.document.get("comparisons") or [])
        if what != "summary":
            raise UsageError(f"to_pandas: {what!r} is not one of summary, rows, comparisons")
        flat = []
        for entry in self.document["summary"]:
            row = {k: v for k, v in entry.items() if not isinstance(v, dict)}
            for key, stat in entry.items():
                if isinstance(stat, dict) and "mean" in stat:
                    row[key] = stat["mean"]
                    row[f"{key}_std"] = stat.get("std")
            flat.append(row)
        return pd.DataFrame(flat)


def run(recipe: str | Path = "breastmnist", *, out: str | Path | None = None,
        overrides: Mapping[str, Any] | Iterable[str] | None = None, data_root: str | Path | None = None,
        fresh: bool = False, say: Callable[[str], None] | None = print, progress: bool | None = False) -> RunResult | None:
    """Run a recipe (a built-in name or a YAML path) as `medlite run` does; returns the finished run.

    `overrides` are `--set`'s, as a mapping (`{"student.epochs": 2}`) or "key=value" strings. `out`
    defaults to the CLI's `runs/<name>-<data>` directory; `say` receives the progress lines (None: quiet).
    In a script torchrun or srun started on several ranks, rank 0 runs the recipe and the other ranks
    train with it (README, "Several nodes"); there it returns None.
    """
    from medlite.pipeline import run_pipeline
    from medlite.recipe import default_run_dir, load_recipe
    from medlite.train import launched
    from medlite.train.device import resolve_device

    parsed = load_recipe(str(recipe), _override_list(overrides))
    root = Path(out) if out is not None else default_run_dir(parsed)

    def lead(_world) -> RunResult:
        results = run_pipeline(parsed, root, _data_root(data_root), fresh=fresh, say=say or (lambda _: None),
                               progress=progress, default_out=out is None)
        return RunResult(root, results)

    return launched.on_every_rank(resolve_device(parsed.device), lead)


def load(run_dir: str | Path) -> RunResult:
    """A finished run directory (its `results.json`), e.g. one `medlite run` made."""
    from medlite.deploy.select import load_results
    from medlite.runtime import ArtifactError

    root = Path(run_dir)
    try:
        return RunResult(root, load_results(root))
    except ArtifactError as err:
        raise UsageError(str(err)) from None


def study(study_file: str | Path, *, out: str | Path | None = None, data_root: str | Path | None = None,
          workers: int | None = None, say: Callable[[str], None] | None = print) -> StudyResult:
    """Run (or resume) a study file as `medlite study` does, on the local executor."""
    from medlite.study.runner import prepare_study, run_study

    path = Path(study_file)
    root = Path(out) if out is not None else Path("runs") / f"study-{prepare_study(path)[0].name}"
    document = run_study(path, root, _data_root(data_root), workers=workers, say=say or (lambda _: None))
    return StudyResult(root, document)


@dataclass
class EvaluationResult:
    """An external evaluation (`medlite evaluate`): the document written to `evaluation.json`."""

    root: Path
    document: dict

    @property
    def multilabel(self) -> bool:
        return self.document.get("task") == "multilabel"

    @property
    def auc(self) -> float | None:
        """The headline AUC: macro one-vs-rest (single-label) or the mean over labels (multi-label)."""
        metrics = self.document["metrics"]
        return (metrics["multilabel"] if self.multilabel else metrics["argmax"])["auc"]

    def to_pandas(self):
        """One row per class (single-label: sensitivity, specificity, support at the argmax) or per
        label (multi-label: AUC, AP, threshold, sensitivity, specificity, positives)."""
        import pandas as pd

        metrics = self.document["metrics"]
        rows = metrics["multilabel"]["per_label"] if self.multilabel else metrics["argmax"]["per_class"]
        frame = pd.DataFrame([{"name": name, **{k: v for k, v in row.items() if not isinstance(v, dict)}}
                              for name, row in rows.items()])
        return frame


def evaluate_external(model: str | Path, data: str, *, out: str | Path | None = None, data_root: str | Path | None = None,
             split: str = "test", class_map: Mapping[str, str] | None = None, bootstrap: int = 1000,
             threads: int = 0) -> EvaluationResult:
    """Test a deployed file (or a run directory's deployed file) on another dataset, as `medlite evaluate`
    (`medlite.evaluate` itself is the package of the evaluation code, so the function has the longer name).

    `data`: a built-in recipe or recipe YAML (its data section), a MedMNIST flag, or an image folder;
    `class_map`: {data class: model class}. The files land in `out` (default `runs/evaluate-<model>-<data>`).
    """
    from medlite.evaluate.external import evaluate_external as run_evaluation

    document = run_evaluation(Path(model), data, _data_root(data_root), class_map=dict(class_map or {}),
                                 split=split, out=Path(out) if out is not None else None, bootstrap=bootstrap,
                                 threads=threads)
    return EvaluationResult(Path(document["out"]), document)
