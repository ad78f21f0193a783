"""Label tables: a CSV or TSV of image paths with labels, groups and a split, one row per image.

Labels come from one class column (`label: dx`), several 0/1 columns (`labels: all` or a list:
multi-label), or one column of separated findings (`label: Finding Labels`, `label_separator: "|"`,
NIH style). `image` is a column, or a pattern over the row's columns ("HAM10000/{dx}/{image_id}.jpg");
paths are relative to the table's folder, or to `root`. `group` (a patient, a lesion) keeps every
group in one split; `split_column` gives the split. Every fault names the file, the row and the column.

The same reader serves `data.groups` of an image folder: a table mapping file names to groups.
"""

from __future__ import annotations

import csv
import string
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from medlite.config_base import Strict
from medlite.data.config import DataConfig
from medlite.data.dataset import MULTICLASS, MULTILABEL, Part, Source
from medlite.data.paths import resolve_dir, resolve_file
from medlite.data.registry import register_source
from medlite.data.sample import native_channels, native_size
from medlite.errors import DataError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_ZERO_ONE = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_GENERIC_STEMS = {"labels", "label", "metadata", "data", "table", "index", "images", "train", "all"}


class TableData(DataConfig):
    """A CSV/TSV table of image paths and labels (a class column, 0/1 columns or a separated column)."""

    source: Literal["table"] = "table"
    table: str = Field(description="the CSV or TSV file (.tsv/.tab: tab-separated)")
    root: str | None = Field(None, description="folder the image paths are relative to; default: the table's folder")
    image: str = Field("image", min_length=1, description="column of image paths, or a pattern such as '{dx}/{image_id}.jpg'")
    label: str | None = Field(None, description="the class column (with label_separator: a column of separated findings)")
    labels: Literal["all"] | list[str] | None = Field(
        None, description="multi-label 0/1 columns: a list, or 'all' (every 0/1 column)"
    )
    label_separator: str | None = Field(None, min_length=1, description="e.g. '|': the label column holds several findings")
    no_finding: str | None = Field("No Finding", description="with label_separator: the value that means no finding")
    classes: list[str] | None = Field(None, min_length=1, description="the classes, in order; a label outside them is an error")
    class_map: dict[str, str] | None = Field(None, description="rename labels (table value -> class name)")
    group: str | None = Field(None, description="column of group ids (patient, lesion): a group never spans two splits")
    split_column: str | None = Field(None, description="column giving each image's split (train, val, test)")
    skip_bad: bool = Field(False, description="skip unreadable images (counted in the summary) instead of failing")

    @model_validator(mode="after")
    def _one_label_form(self) -> "TableData":
        if (self.label is None) == (self.labels is None):
            raise ValueError("give exactly one of label (a class column) or labels (0/1 columns: a list, or all)")
        if self.label_separator is not None and self.label is None:
            raise ValueError("label_separator splits the label column: give label, not labels")
        if self.classes is not None and self.labels is not None:
            raise ValueError("classes lists the values of the label column; with labels the classes are those columns")
        # Judged by value, not by "was it given": a resolved recipe states every key at its default.
        if self.no_finding != type(self).model_fields["no_finding"].default and self.label_separator is None:
            raise ValueError("no_finding applies to a separated label column: give label_separator too")
        return self


class GroupTable(Strict):
    """`data.groups` of an image folder: a table with a file-name column and a group column."""

    table: str
    image: str = Field("image", description="column of file names (with or without suffix) or paths inside the folder")
    group: str = Field("group", description="column of group ids (patient, lesion)")


# -- reading -------------------------------------------------------------------------------


def _fault(path: Path, row: int, line: int, column: str, what: str) -> DataError:
    return DataError(f"{path}: row {row} (line {line}), column {column!r}: {what}")


def read_table(path: Path) -> tuple[list[str], list[tuple[int, int, dict[str, str]]]]:
    """(columns, [(row number, line number, {column: value})]); comma- or tab-separated."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text table (byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty table (no header row)")
    head = lines[0]
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") or ("\t" in head and "," not in head) else ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        columns = [c.strip() for c in next(reader)]
        seen: set[str] = set()
        for column in columns:
            if not column:
                raise DataError(f"{path}: the header has an empty column name")
            if column in seen:
                raise DataError(f"{path}: column {column!r} appears twice in the header")
            seen.add(column)
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line
            number = len(rows) + 1
            if len(cells) > len(columns):
                raise DataError(f"{path}: row {number} (line {reader.line_num}) has {len(cells)} fields, the header {len(columns)}")
            values = {c: (cells[i].strip() if i < len(cells) else "") for i, c in enumerate(columns)}
            rows.append((number, reader.line_num, values))
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: malformed table ({err})") from None
    if not rows:
        raise DataError(f"{path}: no rows below the header")
    return columns, rows


def _require(path: Path, columns: list[str], column: str, key: str) -> None:
    if column not in columns:
        import difflib

        hint = difflib.get_close_matches(column, columns, n=1)
        raise DataError(
            f"{path}: row 0 (header), column {column!r} (data.{key}): no such column"
            + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; columns: {', '.join(columns)}"
        )


def _pattern_fields(pattern: str) -> list[str] | None:
    """The columns a pattern such as 'HAM10000/{dx}/{image_id}.jpg' uses; None for a plain column name."""
    if "{" not in pattern:
        return None
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(pattern) if name is not None]
    except ValueError as err:
        raise DataError(f"data.image: {pattern!r} is not a valid pattern ({err})") from None
    if not fields or any(not f for f in fields):
        raise DataError(f"data.image: {pattern!r}: every {{...}} must name a column, e.g. {{image_id}}")
    return fields


def _zero_one(path: Path, row: int, line: int, column: str, value: str) -> int:
    if value not in _ZERO_ONE:
        raise _fault(path, row, line, column, f"{value!r} is not 0 or 1 (a multi-label column marks each image 0 or 1)")
    return _ZERO_ONE[value]


def _labels(cfg: TableData, path: Path, columns: list[str], rows: list, used: set[str]) -> tuple[np.ndarray, list[str], str]:
    """(labels, class names, task) from the label column(s)."""
    rename = cfg.class_map or {}
    if cfg.labels is not None:
        if cfg.labels == "all":
            chosen = [c for c in columns if c not in used and all(values[c] in _ZERO_ONE for _, _, values in rows)]
            if not chosen:
                raise DataError(f"{path}: labels: all found no 0/1 column besides {', '.join(sorted(used))} (columns: {', '.join(columns)})")
        else:
            chosen = list(cfg.labels)
            for column in chosen:
                _require(path, columns, column, "labels")
        hot = np.array([[_zero_one(path, r, ln, c, v[c]) for c in chosen] for r, ln, v in rows], np.uint8)
        return hot, [rename.get(c, c) for c in chosen], MULTILABEL
    _require(path, columns, cfg.label, "label")
    column = cfg.label
    if cfg.label_separator is not None:
        found: list[list[str]] = []
        for r, ln, values in rows:
            tokens = [rename.get(t.strip(), t.strip()) for t in values[column].split(cfg.label_separator)]
            found.append([t for t in tokens if t and t != cfg.no_finding])
        names = list(cfg.classes) if cfg.classes else _ordered({t for ts in found for t in ts})
        index = {n: i for i, n in enumerate(names)}
        hot = np.zeros((len(rows), len(names)), np.uint8)
        for i, ((r, ln, _), tokens) in enumerate(zip(rows, found)):
            for token in tokens:
                if token not in index:
                    raise _fault(path, r, ln, column, f"{token!r} is not a class ({', '.join(names)})")
                hot[i, index[token]] = 1
        return hot, names, MULTILABEL
    raw = []
    for r, ln, values in rows:
        if not values[column]:
            raise _fault(path, r, ln, column, "empty label")
        raw.append(rename.get(values[column], values[column]))
    names = list(cfg.classes) if cfg.classes else _ordered(set(raw))
    index = {n: i for i, n in enumerate(names)}
    for (r, ln, _), value in zip(rows, raw):
        if value not in index:
            raise _fault(path, r, ln, column, f"{value!r} is not a class ({', '.join(names)})")
    return np.array([index[v] for v in raw], np.int64), names, MULTICLASS


def _ordered(names: set[str]) -> list[str]:
    """Class names sorted; numbered classes by number (2 before 10)."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _column_values(path: Path, rows: list, column: str, what: str) -> list[str]:
    out = []
    for r, ln, values in rows:
        if not values[column]:
            raise _fault(path, r, ln, column, f"empty {what}")
        out.append(values[column])
    return out


def load(cfg: TableData, data_root: Path) -> Source:
    path = resolve_file(cfg.table, data_root, "data.table")
    columns, rows = read_table(path)
    base = resolve_dir(cfg.root, data_root, "data.root") if cfg.root else path.parent
    fields = _pattern_fields(cfg.image)
    for column in fields or [cfg.image]:
        _require(path, columns, column, "image")
    used = set(fields or [cfg.image])
    for key in ("group", "split_column"):
        if getattr(cfg, key):
            _require(path, columns, getattr(cfg, key), key)
            used.add(getattr(cfg, key))
    if cfg.label:
        used.add(cfg.label)
    labels, class_names, task = _labels(cfg, path, columns, rows, used)

    image_column = cfg.image if fields is None else f"{cfg.image} (data.image)"
    ids, files, first_row = [], [], {}
    for r, ln, values in rows:
        try:
            rel = cfg.image.format_map(values) if fields else values[cfg.image]
        except (ValueError, KeyError, IndexError) as err:  # e.g. a format spec such as {id:05d} on text
            raise _fault(path, r, ln, image_column, f"the pattern cannot be filled ({err})") from None
        empty = [f for f in fields or [cfg.image] if not values[f]]
        if empty or not rel:
            raise _fault(path, r, ln, (empty or [cfg.image])[0], "empty image path" if fields is None else "empty (the image pattern needs it)")
        if rel in first_row:
            raise _fault(path, r, ln, image_column, f"image {rel!r} is already in row {first_row[rel]}")
        first_row[rel] = r
        file = base / rel
        if not file.is_file():
            raise _fault(path, r, ln, image_column, f"image {str(file)!r} not found")
        ids.append(rel)
        files.append(file)
    ids_array = np.array(ids, dtype=object)
    groups = np.array(_column_values(path, rows, cfg.group, "group"), dtype=object) if cfg.group else None

    whole = Part(labels, ids_array, groups, files=files)
    if cfg.split_column:
        named = []
        for r, ln, values in rows:
            value = values[cfg.split_column]
            if value.lower() not in SPLIT_NAMES:
                raise _fault(path, r, ln, cfg.split_column, f"{value!r} is not a split (train, val, test)")
            named.append(SPLIT_NAMES[value.lower()])
        named_array = np.array(named)
        parts = {s: whole.take(np.flatnonzero(named_array == s)) for s in ("train", "val", "test") if (named_array == s).any()}
        if "train" not in parts:
            raise DataError(f"{path}: column {cfg.split_column!r} (data.split_column) puts no image in train")
    else:
        parts = {"train": whole}
    sample = [(f, "") for f in files]
    name = path.stem if path.stem.lower() not in _GENERIC_STEMS else path.parent.name
    return Source(
        name=name,
        origin=str(path),
        class_names=class_names,
        parts=parts,
        native_channels=native_channels(sample),
        native_size=native_size(sample),
        given_split=f"table column {cfg.split_column!r}" if cfg.split_column else None,
        task=task,
        group_column=cfg.group,
        skip_bad=cfg.skip_bad,
    )


register_source("table", TableData, load)


# -- groups of an image folder ---------------------------------------------------------------


def folder_groups(spec: GroupTable, data_root: Path, root: Path, rel_ids: list[str]) -> np.ndarray:
    """The group of every image of a folder (ids relative to `root`), looked up in a group table by
    relative path, file name, or file name without suffix (the table's `image` column)."""
    path = resolve_file(spec.table, data_root, "data.groups.table")
    columns, rows = read_table(path)
    _require(path, columns, spec.image, "groups.image")
    _require(path, columns, spec.group, "groups.group")
    mapping: dict[str, tuple[str, int]] = {}
    for r, ln, values in rows:
        key, group = values[spec.image], values[spec.group]
        if not key:
            raise _fault(path, r, ln, spec.image, "empty image name")
        if not group:
            raise _fault(path, r, ln, spec.group, "empty group")
        if key in mapping and mapping[key][0] != group:
            raise _fault(path, r, ln, spec.group, f"{key!r} is in group {mapping[key][0]!r} in row {mapping[key][1]}, here {group!r}")
        mapping[key] = (group, r)
    out, missing = [], []
    for rel in rel_ids:
        name = rel.rsplit("/", 1)[-1]
        hit = mapping.get(rel) or mapping.get(name) or mapping.get(name.rsplit(".", 1)[0])
        if hit is None:
            missing.append(rel)
            out.append("")
        else:
            out.append(hit[0])
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of the {len(rel_ids)} images of {root} have no row (column {spec.image!r}), "
            f"e.g. {missing[0]!r}; every image needs a group"
        )
    return np.array(out, dtype=object)


