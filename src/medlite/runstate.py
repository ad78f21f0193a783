"""The run directory and its resume bookkeeping.

A stage records `stages/<name>.json` only after its outputs are safely renamed into place:
the fingerprint of everything it depends on (config, data, parent artifacts), the SHA-256 of
each output, and the facts it produced. A rerun skips a stage only when the fingerprint
matches and every output still has its recorded hash, so a run killed at any moment (even
kill -9) leaves nothing a rerun would trust by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

MANAGED = ("stages", "models", "checkpoints", "logs", "figures", "samples", "predictions")


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (configs, hashes, names)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any):
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunDir:
    def __init__(self, root: Path, store=None) -> None:
        self.root = root
        self.shared = store  # an optional medlite.stagestore.StageStore shared with other runs (a study)
        for name in MANAGED:
            setattr(self, name, root / name)

    def prepare(self, fresh: bool) -> None:
        if fresh:
            for name in MANAGED:
                shutil.rmtree(self.root / name, ignore_errors=True)
            for name in ("results.json", "report.html", "bench.json"):
                (self.root / name).unlink(missing_ok=True)
        for name in MANAGED:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        for stale in self.root.rglob("*.tmp"):  # leftovers of a killed run: never trusted, removed
            stale.unlink(missing_ok=True)

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    # -- stage records ----------------------------------------------------------------
    def _record(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    def cached(self, stage: str, key: str) -> dict | None:
        """The stage's recorded facts when its inputs are unchanged and its outputs intact, else None."""
        facts = self._cached_here(stage, key)
        if facts is None and self.shared is not None:
            record = self.shared.fetch(stage, key, self.root)
            if record is not None:
                write_json(self._record(stage), {k: record[k] for k in ("key", "outputs", "facts")})
                facts = record.get("facts", {})
        return facts

    def _cached_here(self, stage: str, key: str) -> dict | None:
        record_path = self._record(stage)
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("key") != key:
            return None
        for rel, digest in record.get("outputs", {}).items():
            path = self.root / rel
            if not path.is_file() or sha256(path) != digest:
                return None
        return record.get("facts", {})

    def store(self, stage: str, key: str, outputs: list[Path], facts: dict) -> None:
        record = {"key": key, "outputs": {self.rel(p): sha256(p) for p in outputs}, "facts": facts}
        write_json(self._record(stage), record)
        if self.shared is not None:
            self.shared.publish(stage, key, self.root, json.loads(self._record(stage).read_text()))

    def previous_key(self, stage: str) -> str | None:
        try:
            return json.loads(self._record(stage).read_text()).get("key")
        except (OSError, json.JSONDecodeError):
            return None
