"""MedMNIST .npz files: find, download and verify, read.

Metadata (classes, URLs, MD5s) comes from the `medmnist` package's `info.py`. We
load that one file directly: `import medmnist` would import torch and take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np

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
    if "multi-label" in info[flag]["task"]:
        raise DataError(f"data.flag: {flag!r} is multi-label ({info[flag]['task']}): not supported yet")
    return info[flag]


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


def locate(flag: str, size: int, data_root: Path, download: bool = True) -> Path:
    """The path of the official file, looked for in DATA_ROOT and DATA_ROOT/medmnist; downloaded if missing."""
    info = flag_info(flag)
    name = file_name(flag, size)
    for candidate in (data_root / name, data_root / "medmnist" / name):
        if candidate.is_file():
            return candidate
    target = data_root / name
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info.get(f"url{suffix}"), info.get(f"MD5{suffix}")
    if not url:
        raise DataError(f"data.size: {flag} has no {size}px release")
    if not download or os.environ.get("MEDLITE_OFFLINE"):
        raise DataError(f"{name}: not found in {data_root}; download it from {url.split('?')[0]} and put it there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".npz.part")
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataError(
            f"{name}: not found in {data_root} and the download failed ({getattr(err, 'reason', err)}); "
            f"download it from {url.split('?')[0]} and put it in {data_root} (or pass --data-root)"
        ) from None
    if _md5(partial) != md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"{name}: downloaded file does not match the official MD5 {md5}")
    os.replace(partial, target)
    return target


def read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images uint8 NHWC, labels int64 N), 'val': ..., 'test': ...}."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = {}
            for split in ("train", "val", "test"):
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
                if images.ndim == 3:
                    images = images[..., None]
                splits[split] = (images.astype(np.uint8), labels.reshape(len(labels), -1)[:, 0].astype(np.int64))
            return splits
    except KeyError as err:
        raise DataError(f"{path}: missing key {err.args[0]!r}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
