"""`medlite data --verify`: check a recipe's data before anything trains on it.

Checks: the MedMNIST file's MD5, that the data loads, unreadable files, shapes and pixel ranges,
counts per split and class (or label), class balance, group leakage across splits, exact and
near-duplicate images across splits (`medlite.data.duplicates`) and published faults of
official splits (DermaMNIST's lesion overlap).

Each finding is a `fault` (training on this data would be wrong, or would be refused: a class
with no training image, groups across splits without `data.allow_group_leakage`, unreadable files
without `data.skip_bad`, a damaged file) or a `warning` (figures may mislead, training is not
wrong: duplicates across splits, imbalance, accepted leakage, a known split fault). The CLI
prints the report and exits 2 when there is a fault.

To see every fault at once rather than the first, the data is loaded with leakage accepted and
unreadable files skipped; the report then turns those into faults where the recipe does not allow them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from medlite.data.duplicates import DEFAULT_MAX_DISTANCE, DuplicateReport, find_duplicates, flat_images, known_split_warnings
from medlite.data.splits import crossing_groups
from medlite.errors import DataError, UsageError

if TYPE_CHECKING:
    from medlite.data.config import DataConfig
    from medlite.data.dataset import Dataset

FAULT, WARNING = "fault", "warning"
# Largest / smallest class in train at or above which imbalance is worth a warning.
IMBALANCE_WARN = 10.0
SHOWN = 5  # examples named in one finding

# The text load_dataset adds when leakage is accepted: the report states leakage itself.
_ACCEPTED_LEAKAGE = "accepted by data.allow_group_leakage"


@dataclass(frozen=True)
class Finding:
    level: Literal["fault", "warning"]
    check: str  # md5, load, unreadable, shapes, values, classes, balance, groups, duplicates, known_split, source
    message: str


@dataclass
class VerifyReport:
    source: str
    origin: str | None = None
    findings: list[Finding] = field(default_factory=list)
    summary: dict | None = None  # Dataset.summary(), when the data loaded
    md5: dict | None = None  # MedMNIST: file, md5, expected, ok
    shapes: dict[str, dict] = field(default_factory=dict)  # split -> images [N,H,W,C], dtype, labels shape
    values: dict[str, dict] = field(default_factory=dict)  # split -> min, max, mean, flat_images
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class (or label) -> images
    balance: dict = field(default_factory=dict)  # train: largest, smallest, ratio (multi-label: prevalence)
    groups: dict | None = None  # column, groups per split, crossing, examples
    unreadable: list[str] = field(default_factory=list)
    duplicates: DuplicateReport | None = None

    def add(self, level: str, check: str, message: str) -> None:
        self.findings.append(Finding(level, check, message))

    @property
    def faults(self) -> list[Finding]:
        return [f for f in self.findings if f.level == FAULT]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "source": self.source,
            "origin": self.origin,
            "faults": [asdict(f) for f in self.faults],
            "warnings": [asdict(f) for f in self.warnings],
            "md5": self.md5,
            "shapes": self.shapes,
            "values": self.values,
            "counts": self.counts,
            "balance": self.balance,
            "groups": self.groups,
            "unreadable": list(self.unreadable),
            "duplicates": None if self.duplicates is None else self.duplicates.to_dict(),
            "summary": self.summary,
        }


def verify_data(cfg: DataConfig, data_root: Path, seed: int, max_distance: int = DEFAULT_MAX_DISTANCE) -> VerifyReport:
    """Every check on the data `cfg` describes; the report's faults say whether training on it would be wrong."""
    # local: loading needs the data package's readers (PIL, scikit-learn); this module's import stays cheap.
    from medlite.data import load_dataset

    report = VerifyReport(source=cfg.source)
    for text in known_split_warnings(cfg):
        report.add(WARNING, "known_split", text)
    if cfg.source == "medmnist" and not _check_md5(cfg, data_root, report):
        return report

    update = {"allow_group_leakage": True}
    if "skip_bad" in type(cfg).model_fields:
        update["skip_bad"] = True
    relaxed = cfg.model_copy(update=update)
    try:
        dataset = load_dataset(relaxed, data_root, seed, multilabel=True)
    except UsageError as err:  # DataError, or a path the recipe names that does not resolve
        report.add(FAULT, "load", str(err))
        return report
    report.origin = dataset.origin
    report.summary = dataset.summary()
    from medlite.data import SKIPPED_MARK  # local, like load_dataset above

    # Accepted leakage and skipped files are said by their own checks below, once.
    report.summary["warnings"] = [w for w in dataset.warnings if _ACCEPTED_LEAKAGE not in w and SKIPPED_MARK not in w]
    for text in report.summary["warnings"]:
        report.add(WARNING, "source", text)

    _check_unreadable(dataset, cfg, report)
    _check_arrays(dataset, report)
    _check_classes(dataset, report)
    _check_groups(dataset, cfg, report)
    _check_duplicates(dataset, max_distance, report)
    return report


def _check_md5(cfg: DataConfig, data_root: Path, report: VerifyReport) -> bool:
    """The official file's MD5, computed afresh (not the remembered one). False: stop, the file is unusable."""
    from medlite.data.medmnist import _md5, file_name, flag_info

    try:
        info = flag_info(cfg.flag)
    except DataError as err:
        report.add(FAULT, "load", str(err))
        return False
    suffix = "" if cfg.size == 28 else f"_{cfg.size}"
    expected = info.get(f"MD5{suffix}")
    name = file_name(cfg.flag, cfg.size)
    path = next((p for p in (data_root / name, data_root / "medmnist" / name) if p.is_file()), None)
    if path is None:
        return True  # not here yet: loading downloads it (and checks the MD5 of the download) or says where to put it
    try:
        actual = _md5(path)
    except OSError as err:
        report.add(FAULT, "md5", f"{path}: cannot read ({err.strerror or err})")
        return False
    report.md5 = {"file": str(path), "md5": actual, "expected": expected, "ok": expected is None or actual == expected}
    if not report.md5["ok"]:
        report.add(FAULT, "md5", f"{path}: MD5 {actual} differs from the official {expected} (damaged or not the "
                                 "official file; delete it to download it again)")
        return False
    return True


def _check_unreadable(dataset: Dataset, cfg: DataConfig, report: VerifyReport) -> None:
    report.unreadable = list(dataset.skipped)
    if not report.unreadable:
        return
    shown = ", ".join(report.unreadable[:SHOWN]) + (", ..." if len(report.unreadable) > SHOWN else "")
    if getattr(cfg, "skip_bad", False):
        report.add(WARNING, "unreadable", f"{len(report.unreadable)} unreadable images skipped (data.skip_bad): {shown}")
    else:
        report.add(FAULT, "unreadable", f"{len(report.unreadable)} unreadable images: {shown}; fix or remove them, "
                                        "or set data.skip_bad: true")


def _check_arrays(dataset: Dataset, report: VerifyReport) -> None:
    """Shapes and pixel ranges per split; flat images (every pixel alike) are usually damaged files."""
    for name, split in dataset.splits.items():
        images = split.images
        report.shapes[name] = {"images": list(images.shape), "dtype": str(images.dtype), "labels": list(split.labels.shape)}
        flat = int(flat_images(images).sum()) if len(images) else 0
        report.values[name] = {
            "min": int(images.min()) if len(images) else None,
            "max": int(images.max()) if len(images) else None,
            "mean": round(float(images.mean()), 2) if len(images) else None,
            "flat_images": flat,
        }
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(split.labels):
            report.add(FAULT, "shapes", f"{name}: images {images.dtype} {images.shape} for labels {split.labels.shape}")
        if flat:
            report.add(WARNING, "values", f"{name}: {flat} images have every pixel alike (blank or damaged files?)")
    maxima = [v["max"] for v in report.values.values() if v["max"] is not None]
    if maxima and max(maxima) <= 1:
        report.add(WARNING, "values", "every pixel is 0 or 1: images scaled to [0, 1] and then stored as integers? "
                                      "(masks are fine; photographs are not)")


def _check_classes(dataset: Dataset, report: VerifyReport) -> None:
    """Counts per split and class; a class without training images is a fault, one missing elsewhere a warning."""
    per_class = report.summary["per_class"]
    report.counts = {split: dict(counts) for split, counts in per_class.items()}
    what = "label" if dataset.multilabel else "class"
    train = per_class["train"]
    missing = [name for name, n in train.items() if n == 0]
    if missing:
        kind = "positive training image" if dataset.multilabel else "training image"
        report.add(FAULT, "classes", f"train: no {kind} for {what} {', '.join(map(repr, missing))}: "
                                     "the model cannot learn it")
    for split in ("val", "test"):
        if len(dataset.splits[split]) == 0:
            if split == "val":
                report.add(WARNING, "classes", "val: empty (no early stopping or operating point on held-out data)")
            continue
        absent = [name for name, n in per_class[split].items() if n == 0]
        if absent:
            image = "positive image" if dataset.multilabel else "image"
            report.add(WARNING, "classes", f"{split}: no {image} of {what} {', '.join(map(repr, absent))} "
                                           "(its per-class figures and AUC are undefined there)")
    n_train = len(dataset.splits["train"])
    present = {name: n for name, n in train.items() if n > 0}
    if dataset.multilabel:
        report.balance = {"prevalence": {name: round(n / n_train, 4) if n_train else None for name, n in train.items()}}
        return
    if not present:
        return
    largest, smallest = max(present, key=present.get), min(present, key=present.get)
    ratio = present[largest] / present[smallest]
    report.balance = {"largest": largest, "smallest": smallest, "ratio": round(ratio, 2),
                      "shares": {name: round(n / n_train, 4) for name, n in train.items()}}
    if ratio >= IMBALANCE_WARN:
        report.add(WARNING, "balance", f"train: {largest!r} has {ratio:.1f}x the images of {smallest!r} "
                                       "(data.balance: class_weights or sampler; judge by balanced accuracy)")


def _check_groups(dataset: Dataset, cfg: DataConfig, report: VerifyReport) -> None:
    splits = {name: s for name, s in dataset.splits.items() if len(s)}
    if not splits or any(s.groups is None for s in splits.values()):
        return
    column = dataset.group_column or "group"
    crossing = crossing_groups({name: s.groups for name, s in splits.items()})
    examples = [{"group": g, "splits": crossing[g]} for g in sorted(crossing)[:SHOWN]]
    report.groups = {
        "column": column,
        "per_split": {name: int(len(np.unique(s.groups))) for name, s in splits.items()},
        "crossing": len(crossing),
        "examples": examples,
    }
    if not crossing:
        return
    shown = "; ".join(f"{e['group']!r} in {' and '.join(e['splits'])}" for e in examples)
    text = f"{dataset.origin}: {len(crossing)} groups ({column}) are in more than one split (e.g. {shown})"
    if cfg.allow_group_leakage:
        report.add(WARNING, "groups", f"{text}: accepted by data.allow_group_leakage, test figures may be optimistic")
    else:
        report.add(FAULT, "groups", f"{text}; fix the split, or set data.allow_group_leakage: true to accept it")


def _check_duplicates(dataset: Dataset, max_distance: int, report: VerifyReport) -> None:
    dup = find_duplicates(dataset, max_distance)
    report.duplicates = dup
    by_pair: dict[str, list] = {}
    for pair in dup.pairs:
        by_pair.setdefault(f"{pair.split_a}/{pair.split_b}", []).append(pair)
    for key, counts in dup.counts.items():
        if not counts.exact + counts.near:
            continue
        a, b = key.split("/")
        first = by_pair.get(key, [])[:2]
        shown = "; ".join(f"{p.id_b} ~ {p.id_a} ({p.kind}, {p.distance} bits)" for p in first)
        conflicts = f", {counts.label_conflicts} with different labels" if counts.label_conflicts else ""
        report.add(WARNING, "duplicates",
                   f"{b}: {counts.images_b_with_copy} images have a copy in {a} ({counts.exact} exact, {counts.near} near "
                   f"pairs within {max_distance} bits{conflicts}; e.g. {shown})")
    for split, copies in dup.within_copies.items():
        if copies:
            conflicting = sum(not g.same_label for g in dup.within if g.split == split)
            more = f", {conflicting} groups with different labels" if conflicting else ""
            report.add(WARNING, "duplicates", f"{split}: {copies} images are exact copies of another image of {split}{more}")
