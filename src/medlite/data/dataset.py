"""What a data source hands over (`Source`) and what everything downstream sees (`Dataset`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlite.data.preprocess import PreprocessSpec, resize_batch
from medlite.errors import DataError
from medlite.task import MULTICLASS, MULTILABEL, task_of  # noqa: F401 - the task names, re-exported for the sources

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,) class indices; multi-label: uint8 (N, K) multi-hot
    # Per image: where it came from (a file path relative to the folder or table, "train_images[12]"
    # for MedMNIST, "X_train.npy[12]" for arrays), its group (patient, lesion; None: unknown) and its
    # fold of the k-fold partition (-1 outside it; None: no k-fold). splits.csv is written from these.
    ids: np.ndarray | None = None
    groups: np.ndarray | None = None
    folds: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = np.array([str(i) for i in range(len(self.labels))], dtype=object)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Part:
    """Images a source read for one given split ('train' is every image of an unsplit source).

    `images` holds them already decoded; a source that knows its files up front (a table) gives
    `files` instead, and only the images kept after splitting and `data.limit` are decoded.
    """

    labels: np.ndarray
    ids: np.ndarray
    groups: np.ndarray | None = None
    images: np.ndarray | None = None
    files: list[Path] | None = None
    folds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> "Part":
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        files = None if self.files is None else [self.files[i] for i in idx]
        return Part(self.labels[idx], self.ids[idx], pick(self.groups), pick(self.images), files, pick(self.folds))

    @staticmethod
    def concat(parts: list["Part"]) -> "Part":
        def join(name: str):
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                return None
            return [x for v in values for x in v] if name == "files" else np.concatenate(values)

        return Part(join("labels"), join("ids"), join("groups"), join("images"), join("files"), join("folds"))


@dataclass
class Source:
    """A source's reading of the data, before the shared splitting, folds, limits and checks."""

    name: str
    origin: str  # the file or folder, for messages and the summary
    class_names: list[str]
    parts: dict[str, Part]  # 'train', plus 'val' / 'test' where the source has them
    native_channels: int
    native_size: int
    # How the source split the parts when that is not an official release ("folders", "table column
    # 'split'"): the split origin then, even where val or test had to be filled. None: "official"
    # where the source has all three splits, else the seeded split that filled them.
    given_split: str | None = None
    task: str = MULTICLASS
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    group_column: str | None = None  # what a group is ('lesion_id'), for messages
    skip_bad: bool = False  # lazily read files: skip unreadable ones instead of failing
    skip_reasons: dict[str, str] = field(default_factory=dict)  # skipped file -> why it could not be read
    listing: dict[str, int] = field(default_factory=dict)  # a folder's hidden_skipped, symlinked, nested counts


@dataclass
class Dataset:
    name: str
    source: str
    origin: str
    class_names: list[str]
    splits: dict[str, Split]
    native_channels: int
    native_size: int
    mean: float
    std: float
    split_origin: str  # "official", "folders", "seeded stratified (70/10/20)", "grouped by lesion_id ..."
    skipped: list[str] = field(default_factory=list)
    task: str = MULTICLASS  # "multilabel": labels are (N, K) multi-hot, class_names the K findings
    warnings: list[str] = field(default_factory=list)  # e.g. accepted group leakage: shown in tables and the report
    group_column: str | None = None
    skip_reasons: dict[str, str] = field(default_factory=dict)
    listing: dict[str, int] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multilabel(self) -> bool:
        return task_of(self.task).multilabel

    @property
    def channels(self) -> int:
        return self.splits["train"].images.shape[3]

    @property
    def image_size(self) -> int:
        return self.splits["train"].images.shape[1]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec(self.image_size, self.channels, self.mean, self.std, tuple(self.class_names),
                              activation=task_of(self.task).activation)

    def at_size(self, image_size: int) -> "Dataset":
        """The same dataset with every image resized to `image_size` (`resize_batch`: the resampling every
        deployed model's input preparation uses), for a model trained at a lower resolution than the
        data's (`student.image_size`). Itself when the size is already the data's."""
        if image_size == self.image_size:
            return self
        from dataclasses import replace

        splits = {name: replace(split, images=resize_batch(split.images, image_size)) for name, split in self.splits.items()}
        return replace(self, splits=splits, _fingerprint=None)

    def fingerprint(self) -> str:
        """Content hash of every image and label: resume reruns training when the data changes.

        Computed once (every stage key includes it); the splits are not modified after loading.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(repr((self.class_names, self.mean, self.std)).encode())
            for split in SPLITS:
                digest.update(self.splits[split].images.tobytes())
                digest.update(self.splits[split].labels.tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def _per_class(self, split: Split) -> dict[str, int]:
        if self.multilabel:  # images positive for each finding
            return {name: int(split.labels[:, i].sum()) if len(split) else 0 for i, name in enumerate(self.class_names)}
        return {name: int((split.labels == i).sum()) for i, name in enumerate(self.class_names)}

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "origin": self.origin,
            "task": self.task,
            "classes": self.class_names,
            "num_classes": self.num_classes,
            "split": self.split_origin,
            "images": {split: len(s) for split, s in self.splits.items()},
            "per_class": {split: self._per_class(s) for split, s in self.splits.items()},
            "group_column": self.group_column,
            "groups": {split: None if s.groups is None else len(set(s.groups)) for split, s in self.splits.items()},
            "native_size": self.native_size,
            "native_channels": self.native_channels,
            "image_size": self.image_size,
            "channels": self.channels,
            "skipped_images": len(self.skipped),
            # what data.skip_bad left out, and why: a clinician can find every dropped image
            "skipped": [{"file": f, "reason": self.skip_reasons.get(f, "unreadable")} for f in self.skipped],
            "files": dict(self.listing),  # a folder's hidden files left out, symlinked and nested files taken
            "warnings": list(self.warnings),
            "fingerprint": self.fingerprint(),
            # per split: studies pair runs evaluated on the very same test images by this
            "split_fingerprints": {
                name: hashlib.sha256(s.images.tobytes() + s.labels.tobytes()).hexdigest()[:16] for name, s in self.splits.items()
            },
        }


def unreadable_reason(err: BaseException) -> str:
    """Why an image file could not be read, in one short line (recorded for data.skip_bad)."""
    text = " ".join(str(err).split())
    if "cannot identify image file" in text:
        text = "not an image file Pillow can decode"
    return f"{type(err).__name__}: {text}"[:200] if text else type(err).__name__


def rename_classes(class_names: list[str], class_map: dict[str, str] | None, of: str, noun: str = "class",
                   listing: str = "") -> list[str]:
    """`data.class_map` applied to a source's class names; a key that is not one of them is refused,
    naming it and the names there are (`listing` prefixes that list, e.g. "labels: ")."""
    unknown = sorted(set(class_map or {}) - set(class_names))
    if unknown:
        raise DataError(f"data.class_map: {unknown[0]!r} is not a {noun} of {of} ({listing}{', '.join(class_names)})")
    return [class_map.get(n, n) for n in class_names] if class_map else list(class_names)
