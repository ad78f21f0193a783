"""MedMNIST .npz files: find, download and verify, read.

Metadata (classes, URLs, MD5s) comes from the `medmnist` package's `info.py`. We
load that one file directly: `import medmnist` would import torch and take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
import zlib
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from medlite.data.config import DataConfig
from medlite.data.dataset import MULTICLASS, MULTILABEL, Part, Source, rename_classes
from medlite.data.registry import register_source
from medlite.errors import DataError


@lru_cache(maxsize=1)
def medmnist_info() -> dict:
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'medmnist' package is not installed (pip install medmnist)")
    info_path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_medmnist_info", info_path)
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO


def flag_info(flag: str) -> dict:
    info = medmnist_info()
    if flag not in info:
        import difflib

        hint = difflib.get_close_matches(flag, list(info), n=1)
        raise DataError(
            f"data.flag: unknown MedMNIST flag {flag!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    if flag.endswith("3d"):
        raise DataError(f"data.flag: {flag!r} is a 3D dataset: not supported yet")
    return info[flag]


def is_multilabel(info: dict) -> bool:
    """A flag whose images carry several 0/1 labels (chestmnist: 'multi-label, binary-class (14)')."""
    return "multi-label" in info["task"]


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def default_data_root() -> Path:
    """--data-root, else $MEDLITE_DATA_ROOT, else the user cache (~/.cache/medlite)."""
    env = os.environ.get("MEDLITE_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "medlite"


def cache_dir() -> Path:
    """medlite's own small files (e.g. which data files passed their MD5 check): $MEDLITE_CACHE_DIR,
    else the user cache (~/.cache/medlite)."""
    env = os.environ.get("MEDLITE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medlite"


_VERIFIED_FILE = "verified-md5.json"
_verified_here: dict[str, str] = {}  # this process: key -> md5 (no re-reading the JSON per stage)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _remembered_md5(key: str) -> str | None:
    if key in _verified_here:
        return _verified_here[key]
    try:
        return json.loads((cache_dir() / _VERIFIED_FILE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _remember_md5(key: str, md5: str) -> None:
    """Best effort: a cache we cannot write only means the check runs again next time."""
    _verified_here[key] = md5
    folder = cache_dir()
    try:
        try:
            known = json.loads((folder / _VERIFIED_FILE).read_text())
            known = known if isinstance(known, dict) else {}
        except (OSError, ValueError):
            known = {}
        known[key] = md5
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{_VERIFIED_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(known, handle)
        os.replace(tmp, folder / _VERIFIED_FILE)
    except OSError:
        pass


def verify_md5(path: Path, expected: str | None) -> None:
    """The file must be the official release: its MD5 is computed once per (path, size, mtime)
    and remembered, so later runs do not re-read hundreds of megabytes."""
    if not expected:
        return
    try:
        key = _file_key(path)
        actual = _remembered_md5(key)
        if actual is None:
            actual = _md5(path)
            _remember_md5(key, actual)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if actual != expected:
        raise DataError(
            f"{path}: MD5 {actual} differs from the official {expected} (damaged or not the "
            f"official file; delete it to download it again)"
        )


def locate(flag: str, size: int, data_root: Path, download: bool = True) -> Path:
    """The path of the official file, looked for in DATA_ROOT and DATA_ROOT/medmnist; downloaded if missing.

    A file found is checked against the official MD5 (once, then remembered). The data root is
    created only when a download succeeded: a failed or offline lookup leaves no folder behind.
    """
    info = flag_info(flag)
    name = file_name(flag, size)
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info.get(f"url{suffix}"), info.get(f"MD5{suffix}")
    for candidate in (data_root / name, data_root / "medmnist" / name):
        if candidate.is_file():
            verify_md5(candidate, md5)
            return candidate
    target = data_root / name
    if not url:
        raise DataError(f"data.size: {flag} has no {size}px release")
    if not download or os.environ.get("MEDLITE_OFFLINE"):
        raise DataError(f"{name}: not found in {data_root}; download it from {url.split('?')[0]} and put it there")
    fd, partial_name = tempfile.mkstemp(prefix=f"medlite-{name}.", suffix=".part")
    partial = Path(partial_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                while block := response.read(1 << 20):
                    out.write(block)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise DataError(
                f"{name}: not found in {data_root} and the download failed ({getattr(err, 'reason', err)}); "
                f"download it from {url.split('?')[0]} and put it in {data_root} (or pass --data-root)"
            ) from None
        actual = _md5(partial)
        if md5 and actual != md5:
            raise DataError(f"{name}: downloaded file has MD5 {actual}, not the official {md5}")
        try:
            data_root.mkdir(parents=True, exist_ok=True)
            staged = target.with_name(f".{name}.{os.getpid()}.tmp")
            shutil.move(str(partial), staged)  # the system temp may be another file system
            os.replace(staged, target)
        except OSError as err:
            raise DataError(f"{data_root}: cannot store the downloaded {name} ({err.strerror or err})") from None
        _remember_md5(_file_key(target), actual)
        return target
    finally:
        partial.unlink(missing_ok=True)


_NPZ_FAULTS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError, AttributeError)


def read_npz(path: Path, multi_hot: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images uint8 NHWC, labels int64 N), 'val': ..., 'test': ...}; with `multi_hot=K`
    (a multi-label flag) the labels are uint8 (N, K) 0/1 rows, of exactly K columns.

    A damaged file (truncated, zero bytes, not a zip, missing keys) is a DataError naming it.
    """
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); delete it to download it again")
    try:
        loaded = np.load(path, allow_pickle=False)
    except _NPZ_FAULTS as err:
        raise DataError(f"{path}: not a readable .npz file ({_brief(err)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive (a single array)")
    splits = {}
    with loaded as npz:
        for split in ("train", "val", "test"):
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in npz.files:
                    raise DataError(f"{path}: missing key {key!r} (has: {', '.join(npz.files) or 'none'})")
            try:
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            except _NPZ_FAULTS as err:  # a member that is truncated or fails its CRC
                raise DataError(f"{path}: {split} arrays unreadable ({_brief(err)})") from None
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4 or images.dtype != np.uint8 or labels.ndim == 0 or len(labels) != len(images):
                raise DataError(
                    f"{path}: {split} arrays are not MedMNIST's (images {images.dtype} {images.shape}, labels {labels.shape})"
                )
            if multi_hot is None:
                splits[split] = (images, labels.reshape(len(labels), -1)[:, 0].astype(np.int64))
                continue
            rows = labels.reshape(len(labels), -1)
            if rows.shape[1] != multi_hot:
                raise DataError(f"{path}: {split}_labels has {rows.shape[1]} columns, not the {multi_hot} labels of this flag")
            if not np.isin(rows, (0, 1)).all():
                raise DataError(f"{path}: {split}_labels holds {rows[~np.isin(rows, (0, 1))][0].item()!r}: multi-hot labels must be 0 or 1")
            splits[split] = (images, rows.astype(np.uint8))
    return splits


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:120]


class MedMNISTData(DataConfig):
    """MedMNIST: an official .npz file (downloaded once, MD5-checked), with its official split."""

    source: Literal["medmnist"] = "medmnist"
    flag: str = Field("breastmnist", description="MedMNIST flag, e.g. breastmnist, pneumoniamnist")
    size: Literal[28, 64, 128, 224] = Field(28, description="MedMNIST image size (the file to read)")
    class_map: dict[str, str] | None = Field(None, description="rename classes (official name -> class name)")

    @field_validator("flag")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    def declared_task(self) -> str:
        """Known from the flag's metadata, before the file is read (or downloaded)."""
        return MULTILABEL if is_multilabel(flag_info(self.flag)) else MULTICLASS


def load(cfg: MedMNISTData, data_root: Path) -> Source:
    info = flag_info(cfg.flag)
    multilabel = is_multilabel(info)
    path = locate(cfg.flag, cfg.size, data_root)
    raw = read_npz(path, multi_hot=len(info["label"]) if multilabel else None)
    class_names = rename_classes([info["label"][str(i)] for i in range(len(info["label"]))], cfg.class_map, cfg.flag)
    parts = {
        split: Part(labels, np.array([f"{split}_images[{i}]" for i in range(len(labels))], dtype=object), images=images)
        for split, (images, labels) in raw.items()
    }
    return Source(
        name=cfg.flag if cfg.size == 28 else f"{cfg.flag}_{cfg.size}",
        origin=str(path),
        class_names=class_names,
        parts=parts,
        native_channels=raw["train"][0].shape[3],
        native_size=raw["train"][0].shape[1],
        task=MULTILABEL if multilabel else MULTICLASS,
    )


register_source("medmnist", MedMNISTData, load)
