"""A content-addressed stage store shared by several run directories (the trials of a study).

A run directory records each finished stage as `stages/<name>.json` (see `runstate.RunDir`).
With a `StageStore`, a finished stage is also published under `<store>/<entry>/`, where the
entry name is a hash of the stage name and its key (the fingerprint of everything the stage
depends on). Another run whose stage has the same name and key takes the artifacts from the
store (hard links, or copies across file systems) and the recorded facts instead of
recomputing: a grid over `distill.alpha` trains each seed's teacher once.

Concurrency: trials run in parallel processes (or Ray workers on several nodes sharing the
study directory). A miss takes an exclusive `flock` on the entry's lock file and holds it
until the stage is published, so two trials that need the same teacher train it once: the
second waits, then finds it in the store. A process killed with kill -9 drops its locks (the
kernel releases them) and leaves only a `tmp-*` folder that is never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from medlite.runstate import fingerprint, sha256, write_json


class StageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}  # entry -> fd of its lock file
        self.hits: list[str] = []
        self.published: list[str] = []

    @staticmethod
    def entry(stage: str, key: str) -> str:
        return f"{stage.replace('/', '_')}-{fingerprint(stage, key)}"

    # -- reading ------------------------------------------------------------------------
    def _record(self, entry: str) -> dict | None:
        try:
            return json.loads((self.root / entry / "record.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def fetch(self, stage: str, key: str, run_root: Path) -> dict | None:
        """Materialise a stored stage into `run_root`; returns its record, or None (then the caller
        holds the entry's lock until `publish` or `release_all`)."""
        entry = self.entry(stage, key)
        record = self._take(entry, run_root)
        if record is not None:
            return record
        self._lock(entry)
        record = self._take(entry, run_root)  # another process may have published while we waited
        if record is not None:
            self._unlock(entry)
        return record

    def _take(self, entry: str, run_root: Path) -> dict | None:
        record = self._record(entry)
        if record is None:
            return None
        files = self.root / entry / "files"
        for rel, digest in record["outputs"].items():
            source = files / rel
            if not source.is_file() or sha256(source) != digest:
                return None  # damaged entry: recompute (publish replaces it)
        for rel in record["outputs"]:
            _link_or_copy(files / rel, run_root / rel)
        self.hits.append(entry)
        return record

    # -- writing ------------------------------------------------------------------------
    def publish(self, stage: str, key: str, run_root: Path, record: dict) -> None:
        """Copy a finished stage's outputs and record into the store (atomically: tmp dir, rename)."""
        entry = self.entry(stage, key)
        try:
            final = self.root / entry
            if self._record(entry) is None:
                tmp = self.root / f"tmp-{uuid.uuid4().hex}"
                for rel in record["outputs"]:
                    _link_or_copy(run_root / rel, tmp / "files" / rel)
                write_json(tmp / "record.json", {"stage": stage, **record})
                if final.exists():  # a damaged entry: replace it
                    shutil.rmtree(final, ignore_errors=True)
                try:
                    os.rename(tmp, final)
                except OSError:  # published concurrently by another process
                    shutil.rmtree(tmp, ignore_errors=True)
                self.published.append(entry)
        finally:
            self._unlock(entry)

    # -- locks --------------------------------------------------------------------------
    def _lock(self, entry: str) -> None:
        import fcntl

        if entry in self._held:
            return
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        fd = os.open(locks / f"{entry}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._held[entry] = fd

    def _unlock(self, entry: str) -> None:
        import fcntl

        fd = self._held.pop(entry, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release_all(self) -> None:
        """Drop every lock still held (a stage that failed before publishing)."""
        for entry in list(self._held):
            self._unlock(entry)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link when possible (every medlite artifact is written to a temporary name and renamed,
    never modified in place, so a shared inode is safe), else copy; atomic at the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def is_url(spec: str | os.PathLike) -> bool:
    return "://" in str(spec)


def open_store(spec: str | os.PathLike):
    """The store at a path (`StageStore`) or at an fsspec URL (`FsspecStore`: s3://, gs://, ...)."""
    return FsspecStore(str(spec)) if is_url(spec) else StageStore(Path(spec))


class FsspecStore:
    """The stage store on object storage or any fsspec file system, for trials on nodes that share no
    POSIX file system for it. The same entries as `StageStore` (`<entry>/files/...`, `record.json`).

    Object stores have no locks and no atomic folder rename, so: an entry counts once its
    `record.json` exists, and that is written after every file (a trial killed mid-publish leaves
    files without a record: never read, overwritten by the next publisher). Two trials missing the
    same stage at once may both compute it (no lock to make the second wait): the same result,
    twice the time; each taken file is checked against the recorded digest.
    """

    def __init__(self, url: str) -> None:
        from medlite.errors import UsageError

        try:
            import fsspec
        except ImportError:
            raise UsageError(f"--store {url}: a stage store URL needs fsspec (pip install fsspec, and the "
                             "file system's package, e.g. s3fs); or give a path on storage every node shares") from None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise UsageError(f"--store {url}: {err}") from None
        self.url = url
        self.hits: list[str] = []
        self.published: list[str] = []

    entry = staticmethod(StageStore.entry)

    def _record(self, entry: str) -> dict | None:
        try:
            with self.fs.open(f"{self.root}/{entry}/record.json", "r") as f:
                return json.loads(f.read())
        except (OSError, ValueError):  # FileNotFoundError is an OSError
            return None

    def fetch(self, stage: str, key: str, run_root: Path) -> dict | None:
        entry = self.entry(stage, key)
        record = self._record(entry)
        if record is None:
            return None
        taken = []
        for rel, digest in record["outputs"].items():
            target = run_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{uuid.uuid4().hex[:8]}.tmp")
            try:
                self.fs.get_file(f"{self.root}/{entry}/files/{rel}", str(tmp))
            except OSError:
                tmp.unlink(missing_ok=True)
                break
            if sha256(tmp) != digest:
                tmp.unlink()
                break
            taken.append((tmp, target))
        else:
            for tmp, target in taken:
                os.replace(tmp, target)
            self.hits.append(entry)
            return record
        for tmp, _ in taken:  # a damaged entry: recompute (publish replaces it)
            tmp.unlink(missing_ok=True)
        return None

    def publish(self, stage: str, key: str, run_root: Path, record: dict) -> None:
        entry = self.entry(stage, key)
        if self._record(entry) is not None:
            return
        for rel in record["outputs"]:
            target = f"{self.root}/{entry}/files/{rel}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # object stores: nothing to make
            self.fs.put_file(str(run_root / rel), target)
        self.fs.makedirs(f"{self.root}/{entry}", exist_ok=True)  # a stage may have no output files
        with self.fs.open(f"{self.root}/{entry}/record.json", "w") as f:  # last: the entry now counts
            f.write(json.dumps({"stage": stage, **record}))
        self.published.append(entry)

    def release_all(self) -> None:
        """Nothing held: there are no locks."""
