"""The Stage type: one cached step of the pipeline, and the one place its cache protocol lives.

A stage declares what it depends on (the variants whose artifacts it reads, and its config: any
JSON-able parts), what it writes (`outputs`), how to compute its facts and what it gives the rest
of the pipeline (`emit`: a `Variant`, or a typed record). `run_stage` then, for every stage alike:

1. computes its key (`stage_key`: kind, schema version, medlite's version, the inputs' content
   hashes and the config),
2. reuses the facts an earlier run recorded under the same key when its outputs are intact
   (bringing back the seconds that run spent), or computes them, timed,
3. stores the record (`stages/<name>.json`, and the shared store of a study),
4. returns `emit(facts)`.

Under a dry run (`medlite run --dry-run`) nothing is computed or written: each stage is recorded
in the plan as `reuse` or `run`, and a stage that would run emits its `plan()` placeholder, whose
artifact hash (`planned:<name>`) matches no stored key, so everything downstream is planned too.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from medlite.runstate import RunDir, fingerprint

T = TypeVar("T")

# Bump a stage kind's number whenever what it produces changes for the same inputs (a new loss,
# a changed exporter, new facts): its old records then no longer match and the stage is redone.
# Compression methods carry theirs in `medlite.compress.registry.MethodSpec.schema`, exporters in
# `medlite.export.registry.ExportFormat.schema`.
# bench 4: per-layer views (layers/<variant>.json). train 4: one Stage type (keys are now kind + inputs + config for every stage).
STAGE_SCHEMAS: dict[str, int] = {"train": 4, "export": 2, "evaluate": 2, "predict": 2, "bench": 4, "ensemble": 2,
                                 "explain": 2}


def stage_key(kind: str, *parts: Any, schema: int | None = None) -> str:
    """The fingerprint a stage is cached under: its inputs, medlite's version and the stage's schema."""
    from medlite.version import __version__

    if schema is None:
        if kind not in STAGE_SCHEMAS:
            raise KeyError(f"stage kind {kind!r} has no schema version in medlite.stage.STAGE_SCHEMAS")
        schema = STAGE_SCHEMAS[kind]
    return fingerprint(kind, {"medlite": __version__, "schema": schema}, *parts)


@dataclass
class Output:
    """What `compute` may return instead of bare facts: the facts and the files actually written
    (a compression method whose result is renamed writes another file than it planned)."""

    facts: dict
    files: list[Path]


@dataclass
class Stage(Generic[T]):
    """One step of the stage graph (see the module docstring)."""

    name: str  # its record name: `teacher`, `student_kd.export`, `bench`
    kind: str  # its family, keyed with its schema version: `train`, `export`, `int8_static`, ...
    compute: Callable[[], "dict | Output"]
    emit: Callable[[dict], T]
    inputs: Sequence[Any] = ()  # variants whose artifacts it reads: their content hashes key it
    config: Any = None  # every other JSON-able thing its result depends on
    outputs: Sequence[Path] = ()  # the files it writes (checked intact before a record is trusted)
    plan: Callable[[], T] | None = None  # what it emits under a dry run when it would run
    schema: int | None = None  # default: STAGE_SCHEMAS[kind]
    bucket: str | None = None  # the `timings` entry its seconds add to (default: kind)
    announce: str | None = None  # said when reused: "teacher: unchanged, using checkpoints/teacher.safetensors"
    valid: Callable[[dict], bool] | None = None  # an extra check a reused record must pass

    def key(self, ledger: "StageLedger") -> str:
        return stage_key(self.kind, [ledger.artifact_hash(v) for v in self.inputs], self.config, schema=self.schema)


@dataclass
class PlannedStage:
    """One line of `medlite run --dry-run`: a stage, what it reads and whether it would be reused."""

    name: str
    kind: str
    inputs: list[str]
    action: str  # "reuse" | "run"


@dataclass
class StageLedger:
    """The cache protocol's state for one run: records, timings, what was reused, the dry-run plan."""

    run: RunDir
    say: Callable[[str], None] = print
    planning: bool = False  # a dry run: look up records, compute and write nothing
    timings: dict[str, float] = field(default_factory=dict)
    reused_timings: dict[str, float] = field(default_factory=dict)  # the part of `timings` reused stages brought back
    cached_stages: list[str] = field(default_factory=list)
    plan: list[PlannedStage] = field(default_factory=list)
    _hashes: dict[tuple, str] = field(default_factory=dict)

    @contextmanager
    def timed(self, bucket: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[bucket]` (stages of one kind add up)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(bucket, time.perf_counter() - start)

    def add_time(self, bucket: str, seconds: float) -> None:
        self.timings[bucket] = round(self.timings.get(bucket, 0.0) + seconds, 3)

    def artifact_hash(self, variant: Any) -> str:
        """Content hash of a variant's artifact, memoised by (size, mtime): every stage key asks for it.

        A variant a dry run only planned has no artifact yet: `planned:<name>` matches no stored key.
        """
        rel = variant.file or variant.checkpoint
        if variant.planned or rel is None:
            return f"planned:{variant.name}"
        path = self.run.root / rel
        stat = path.stat()
        memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._hashes:
            from medlite.export.onnx import content_hash  # blind to the operating-point metadata

            self._hashes[memo_key] = content_hash(path)
        return self._hashes[memo_key]

    def run_stage(self, stage: Stage[T]) -> T:
        """Reuse, or compute, time and store `stage`; return what it emits (see the module docstring)."""
        key = stage.key(self)
        if self.planning:
            facts = self.run.cached_here(stage.name, key)
            if facts is not None and (stage.valid is None or stage.valid(facts)):
                self.plan.append(PlannedStage(stage.name, stage.kind, [v.name for v in stage.inputs], "reuse"))
                facts = dict(facts)
                facts.pop("_timing", None)
                return stage.emit(facts)
            self.plan.append(PlannedStage(stage.name, stage.kind, [v.name for v in stage.inputs], "run"))
            if stage.plan is None:
                raise RuntimeError(f"stage {stage.name} has no plan() for a dry run")
            return stage.plan()
        facts = self.run.cached(stage.name, key)
        if facts is not None and (stage.valid is None or stage.valid(facts)):
            facts = dict(facts)
            for bucket, seconds in (facts.pop("_timing", None) or {}).items():
                self.add_time(bucket, seconds)
                self.reused_timings[bucket] = round(self.reused_timings.get(bucket, 0.0) + seconds, 3)
            self.cached_stages.append(stage.name)
            if stage.announce:
                self.say(f"{stage.name}: unchanged, using {stage.announce}")
            for warning in facts.get("warnings") or []:  # a reused variant's warnings are said again
                self.say(f"{facts.get('name', stage.name)}: warning: {warning}")
            return stage.emit(facts)
        if self.run.previous_key(stage.name) and stage.kind == "train":
            self.say(f"{stage.name}: recipe, data or parent changed: retraining")
        bucket = stage.bucket or stage.kind
        start = time.perf_counter()
        try:
            result = stage.compute()
        finally:
            seconds = time.perf_counter() - start
            self.add_time(bucket, seconds)
        if isinstance(result, Output):
            facts, files = result.facts, result.files
        else:
            facts, files = result, list(stage.outputs)
        # The seconds it took, restored when a rerun reuses it.
        self.run.store(stage.name, key, files, {**facts, "_timing": {bucket: round(seconds, 3)}})
        return stage.emit(facts)
