"""Where a recipe's data paths point: absolute, else the working directory, the data root, or its folders/."""

from __future__ import annotations

from pathlib import Path

from medlite.errors import DataError


def _candidates(value: str, data_root: Path) -> list[Path]:
    path = Path(value).expanduser()
    return [path] if path.is_absolute() else [path, data_root / path, data_root / "folders" / path]


def resolve_dir(value: str | None, data_root: Path, key: str) -> Path:
    if not value:
        raise DataError(f"{key}: required for this data source (a folder path)")
    candidates = _candidates(value, data_root)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(f"{key}: folder {value!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def resolve_file(value: str, data_root: Path, key: str) -> Path:
    candidates = _candidates(value, data_root)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{key}: file {value!r} not found (looked in {', '.join(str(c) for c in candidates)})")
