"""The run directory and its resume bookkeeping.

A stage records `stages/<name>.json` only after its outputs are safely renamed into place:
the fingerprint of everything it depends on (config, data, parent artifacts), the SHA-256 of
each output, and the facts it produced. A rerun skips a stage only when the fingerprint
matches and every output still has its recorded hash, so a run killed at any moment (even
kill -9) leaves nothing a rerun would trust by mistake.

Ownership: medlite marks a folder it made with `.medlite-run` (JSON: medlite version, created,
the data it ran on) and touches only what it wrote there. A folder without the marker is the
user's: medlite writes into it only when none of its own output names exist there yet (it then
marks it), never cleans it and refuses `--fresh` on it. Temporary files carry a name no user
file has (`.<name>.<pid>.medlite-tmp`, made only by `atomic_path`), and only those, plus the
`.medlite-<what>-XXXXXXXX` work folders of the compression stages, are cleaned up, and only in a
marked folder. A lock file (`.medlite-run.lock`, `fcntl.flock`, holding the pid and host) keeps
a second live run out; the kernel drops the lock of a killed run, so the next run takes it over.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from medlite.errors import UsageError

MANAGED = ("stages", "models", "checkpoints", "logs", "figures", "samples", "explain", "predictions", "confusion")
MARKER = ".medlite-run"
LOCK = ".medlite-run.lock"
RESOLVED_RECIPE = "recipe.resolved.yaml"  # not recipe.yaml: a user's own recipe often sits there
OUTPUT_FILES = (RESOLVED_RECIPE, "environment.json", "results.json", "report.html", "bench.json",
                "classification_report.csv", "splits.csv")
TMP_SUFFIX = ".medlite-tmp"
_TMP_FILE = re.compile(r"^\..+\.\d+\.medlite-tmp$")
_TMP_DIR = re.compile(r"^\.medlite-[a-z]+-[a-z0-9_]{8}$")  # tempfile.TemporaryDirectory(prefix=".medlite-<what>-")
# A write that fails for one of these is the user's disk or folder, not a medlite bug: exit 2 naming the path.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}
FAULT_ENV = "MEDLITE_FAULT_AT"


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (configs, hashes, names)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def fault_point(event: str, partial: Path | None = None) -> None:
    """Fault injection for tests: SIGKILL this process at the event `$MEDLITE_FAULT_AT` names (a glob).

    With `partial`, that file is first cut to half its size: the state a kill in the middle of
    writing it leaves. Events: `rundir:locked`, `write:<path>`, `store:<stage>`, `epoch:<label>:<n>`.
    """
    pattern = os.environ.get(FAULT_ENV)
    if not pattern or not fnmatch.fnmatchcase(event, pattern):
        return
    if partial is not None and partial.is_file():
        os.truncate(partial, partial.stat().st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def temp_path(path: Path) -> Path:
    """The temporary name of `path` while it is written: hidden, with our pid and a suffix no user file has."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def write_error(path: Path, err: OSError) -> UsageError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    hint = " (disk full?)" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return UsageError(f"{path}: cannot write: {reason}{hint}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` to; rename it into place only when the block succeeds.

    On any failure the temporary file is removed (a full disk leaves nothing half-written), and a
    disk or permission error becomes a one-line UsageError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err) from None
    tmp = temp_path(path)
    try:
        yield tmp
        fault_point(f"write:{path}", partial=tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            raise write_error(path, err) from None
        raise


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path, *, missing: str = "not found (is this a medlite run directory?)") -> dict:
    """The JSON object in `path`; a missing, unreadable or non-object file is a one-line UsageError
    naming it (`missing` says what a missing file means to the caller)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: {missing}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


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


def medlite_version() -> str:
    from medlite.version import __version__

    return __version__


def read_marker(root: Path) -> dict | None:
    """The `.medlite-run` record of a folder medlite made, else None."""
    path = root / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        data = None
    return data if isinstance(data, dict) else {}


def is_run_dir(root: Path) -> bool:
    """True when medlite made `root` (it carries the marker)."""
    return read_marker(root) is not None


def _legacy_run_dir(root: Path) -> bool:
    """A run directory made before markers existed: stage records plus medlite's environment.json."""
    try:
        env = json.loads((root / "environment.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (root / "stages").is_dir() and isinstance(env, dict) and "medlite" in (env.get("versions") or {})


def _describe_data(identity: dict | None) -> str:
    if not identity:
        return "unknown data"
    where = identity.get("root") or identity.get("flag") or identity.get("table")
    return f"data.source={identity.get('source')} ({where}, limit {identity.get('limit')})"


@dataclass(frozen=True)
class Before:
    """What a run directory held before a run opened it: the folders the run will create (`root`
    and its missing parents, deepest first) and the names already in `root`."""

    root: Path
    created: tuple[Path, ...]
    names: frozenset[str]

    @classmethod
    def of(cls, root: Path) -> "Before":
        root = root.absolute()
        created = []
        for path in (root, *root.parents):
            if path.exists() or path.is_symlink():
                break
            created.append(path)
        names = frozenset(p.name for p in root.iterdir()) if root.is_dir() else frozenset()
        return cls(root, tuple(created), names)


# What a run writes before it has computed anything (opening the folder, the resolved recipe).
_SKELETON_FILES = {MARKER, LOCK, RESOLVED_RECIPE, "environment.json"}


def discard_skeleton(before: Before, keep: frozenset[str] = frozenset()) -> bool:
    """Remove what a failed run made when it failed before computing anything (a missing dataset, a
    recipe the data refutes): the empty sub-folders, marker, lock and resolved recipe it wrote, then
    the folders it created (`before.created`) where they are left empty.

    Nothing else is touched: a folder an earlier run made (it had the marker), any entry that was
    there before, a folder holding any other file, one another live run holds. Returns True when
    something was removed. `keep`: new files the caller wrote itself and keeps (a study trial's log of
    why it failed); they do not count as computed, and the folder then stays with only them."""
    root = before.root
    if MARKER in before.names or not root.is_dir():
        return False
    new = [p for p in root.iterdir() if p.name not in before.names]
    for path in new:
        if path.name in _SKELETON_FILES or path.name in keep or _TMP_FILE.match(path.name) and path.is_file():
            continue
        if path.name in MANAGED and path.is_dir() and not path.is_symlink() and \
                not any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
            continue
        return False  # something was computed (or put here): keep it all for the rerun
    if not new:
        return False
    holder = RunDir(root)
    try:
        holder.lock()  # a run that took the folder over since must keep it
    except UsageError:
        return False
    try:
        for path in new:
            if path.name in MANAGED:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name != LOCK and path.name not in keep:
                path.unlink(missing_ok=True)
        (root / LOCK).unlink(missing_ok=True)
    finally:
        holder.close()
    for folder in before.created:  # deepest first, each only when empty
        try:
            folder.rmdir()
        except OSError:
            break
    return True


class RunDir:
    def __init__(self, root: Path, store=None) -> None:
        self.root = root
        self.shared = store  # an optional medlite.stagestore.StageStore shared with other runs (a study)
        for name in MANAGED:
            setattr(self, name, root / name)
        self._lock_fd: int | None = None

    # -- ownership, lock, cleanup ---------------------------------------------------------
    def open(self, fresh: bool = False, data: dict | None = None, same_data: bool = False,
             canonical: Callable[[dict], Any] | None = None) -> None:
        """Check the folder is ours (or new, or free of our names), take the lock, mark, clean, create.

        Raises UsageError (exit 2, naming the folder) for: a path that is a file, a folder that
        cannot be written, `--fresh` on a folder medlite did not make, one of medlite's output
        names already in such a folder, a folder a live run holds, and (with `same_data`, the
        default run directory) a folder whose recorded run used other data.
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root}: is a file, not a folder (a run directory is a folder)")
        marker = read_marker(root) if root.is_dir() else None
        adopted = False
        if root.is_dir() and marker is None and not _legacy_run_dir(root):
            # What a medlite run killed before it could mark the folder left (its lock, a temporary) is not the user's.
            entries = sorted(p.name for p in root.iterdir() if p.name != LOCK and not _TMP_FILE.match(p.name))
            if fresh and entries:
                raise UsageError(
                    f"--fresh: {root} was not made by medlite (no {MARKER}): medlite deletes nothing in it; "
                    "choose a new --out")
            collisions = [n for n in (*MANAGED, *OUTPUT_FILES) if (root / n).exists() or (root / n).is_symlink()]
            if collisions:
                raise UsageError(
                    f"{root}: not a medlite run directory (no {MARKER}) and it already has {collisions[0]!r}: "
                    "medlite never overwrites files it did not write; choose a new or empty --out")
            adopted = bool(entries)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(root, err) from None
        self.lock()
        try:
            self._claim(marker, adopted, data, same_data, canonical)
            if fresh:
                for name in MANAGED:
                    shutil.rmtree(root / name, ignore_errors=True)
                for name in OUTPUT_FILES:
                    (root / name).unlink(missing_ok=True)
            self._clean_temporary()
            for name in MANAGED:
                (root / name).mkdir(exist_ok=True)
        except OSError as err:
            self.close()
            raise write_error(root, err) from None
        except BaseException:
            self.close()
            raise
        fault_point("rundir:locked")

    def lock(self) -> None:
        """Hold `.medlite-run.lock` until close(); a live holder -> UsageError naming its pid and host."""
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(path, err) from None
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise write_error(path, err) from None
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            os.close(fd)
            raise UsageError(
                f"{self.root}: in use by another medlite run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it or choose another --out"
            ) from None
        # The lock is ours: a previous holder has finished or was killed (the kernel released its lock).
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except OSError as err:
            os.close(fd)
            raise write_error(path, err) from None
        self._lock_fd = fd

    def _claim(self, marker: dict | None, adopted: bool, data: dict | None, same_data: bool,
               canonical: Callable[[dict], Any] | None) -> None:
        """`canonical`: the data section as the current schema reads it (a marker written before data
        sources had models of their own still names the same data)."""
        recorded = marker.get("data") if marker else None
        if same_data and data is not None and recorded is not None and recorded != data and \
                (canonical is None or canonical(recorded) != canonical(data)):
            raise UsageError(
                f"{self.root}: holds a run on other data ({_describe_data(marker.get('data'))}); "
                "give this run its own --out")
        record = dict(marker or {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "adopted": adopted})
        record.update({"medlite": medlite_version(), "data": data if data is not None else record.get("data")})
        if record != marker:
            write_json(self.root / MARKER, record)

    def _clean_temporary(self) -> None:
        """Remove what a killed medlite run left mid-write: only our own temporary names, only here."""
        for path in self.root.iterdir():
            if _TMP_FILE.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
        for name in MANAGED:
            for dirpath, dirnames, filenames in os.walk(self.root / name):
                for file in filenames:
                    if _TMP_FILE.match(file):
                        (Path(dirpath) / file).unlink(missing_ok=True)
                for folder in [d for d in dirnames if _TMP_DIR.match(d)]:
                    shutil.rmtree(Path(dirpath) / folder, ignore_errors=True)
                    dirnames.remove(folder)

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with the next run)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_write_fault(self, err: OSError) -> bool:
        """A full disk anywhere, or a permission/not-a-folder error on a path in this run directory."""
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            return True
        if err.errno in DISK_ERRNOS and err.filename:
            return Path(os.path.abspath(err.filename)).is_relative_to(os.path.abspath(self.root))
        return False

    def stage_logs(self, name: str) -> Path:
        """`logs/<name>/`, emptied: a retrained stage's curves never mix with a killed or older attempt's."""
        folder = self.logs / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    # -- stage records ----------------------------------------------------------------
    def _record(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    def cached(self, stage: str, key: str) -> dict | None:
        """The stage's recorded facts when its inputs are unchanged and its outputs intact, else None."""
        facts = self.cached_here(stage, key)
        if facts is None and self.shared is not None:
            record = self.shared.fetch(stage, key, self.root)
            if record is not None:
                write_json(self._record(stage), {k: record[k] for k in ("key", "outputs", "facts")})
                facts = record.get("facts", {})
        return facts

    def cached_here(self, stage: str, key: str) -> dict | None:
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
        fault_point(f"store:{stage}")  # outputs in place, record not yet: the rerun must redo the stage
        write_json(self._record(stage), record)
        if self.shared is not None:
            self.shared.publish(stage, key, self.root, json.loads(self._record(stage).read_text()))

    def previous_key(self, stage: str) -> str | None:
        try:
            return json.loads(self._record(stage).read_text()).get("key")
        except (OSError, json.JSONDecodeError):
            return None
