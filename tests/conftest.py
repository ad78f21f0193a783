"""Shared fixtures: the real data in ../shared/data (or $MEDLITE_DATA_ROOT), tiny recipes.

Tests reach real data only through these fixtures. Locally a missing data folder skips the tests
that need it; under CI (`CI=true`) it fails them: a CI run that silently tested nothing is a lie.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _missing(reason: str):
    """Skip locally; fail under CI, where the data is part of the setup."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: real data is required)", pytrace=False)
    pytest.skip(reason)


def _data_root() -> Path:
    env = os.environ.get("MEDLITE_DATA_ROOT")
    # Absolute: tests run medlite in other working directories (a relative root would move with them).
    return Path(env).resolve() if env else REPO.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "breastmnist.npz").is_file():
        _missing(f"real MedMNIST data not found in {root} (set MEDLITE_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def busi_root(data_root: Path) -> Path:
    for candidate in (data_root.parent / "folders" / "BUSI", data_root / "folders" / "BUSI"):
        if candidate.is_dir():
            return candidate
    _missing("BUSI image folder not found beside the MedMNIST files")


@pytest.fixture(scope="session")
def folders_root(data_root: Path) -> Path:
    """The shared image folders and label tables (BUSI, HAM10000, NIH_ChestXray14_1000)."""
    for candidate in (data_root.parent / "folders", data_root / "folders"):
        if (candidate / "HAM10000_metadata.csv").is_file() and (candidate / "NIH_ChestXray14_1000").is_dir():
            return candidate
    _missing("the shared folders/ (HAM10000, NIH_ChestXray14_1000) not found beside the MedMNIST files")


@pytest.fixture(scope="session")
def shared_root(folders_root: Path) -> Path:
    """The data root that holds folders/: recipes name tables as folders/<table> relative to it."""
    return folders_root.parent


@pytest.fixture(scope="session")
def breast_npz(data_root: Path):
    with np.load(data_root / "breastmnist.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """medlite's user cache (remembered MD5 checks) goes to a private folder, never ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MEDLITE_CACHE_DIR", str(tmp_path_factory.mktemp("medlite-cache")))
    yield
    patch.undo()
