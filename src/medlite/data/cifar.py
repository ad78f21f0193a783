"""CIFAR-10 and CIFAR-100 from the official *binary* archives (`source: cifar10` / `source: cifar100`).

The binary version is plain records: CIFAR-10 `data_batch_1..5.bin` and `test_batch.bin`, each
record 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32 x 32);
CIFAR-100 `train.bin` / `test.bin`, each record a coarse and a fine label byte + 3072 pixel bytes;
label names in `batches.meta.txt` (CIFAR-10) and `coarse_label_names.txt` / `fine_label_names.txt`.
The "python version" archives hold pickles: medlite never unpickles a file a user gives, so they
are refused, naming the binary archive to fetch instead. The archive is read straight from the
.tar.gz (no extraction); a truncated or damaged one is a DataError naming it.

Validation: the releases have train and test only; `val_size` images are held out of train,
stratified by class with `val_seed` (fixed, not the recipe seed: every seed of a study sees the
same validation images), 5000 by default (10 % of the 50 000 training images).
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from pydantic import Field

from medlite.data.config import DataConfig
from medlite.data.dataset import Part, Source
from medlite.data.paths import resolve_file
from medlite.data.registry import register_source
from medlite.data.splits import stratified_split
from medlite.errors import DataError

PIXELS = 32 * 32 * 3


class _Release:
    """What one CIFAR release is made of (names as in the official archives)."""

    def __init__(self, name: str, archive: str, python_archive: str, url: str, train: tuple[str, ...], test: str,
                 label_bytes: int, names: dict[str, str], classes: dict[str, int]) -> None:
        self.name, self.archive, self.python_archive, self.url = name, archive, python_archive, url
        self.train, self.test, self.label_bytes, self.names, self.classes = train, test, label_bytes, names, classes

    @property
    def record(self) -> int:
        return self.label_bytes + PIXELS


CIFAR10 = _Release(
    "cifar10", "cifar-10-binary.tar.gz", "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)), test="test_batch.bin", label_bytes=1,
    names={"fine": "batches.meta.txt"}, classes={"fine": 10},
)
CIFAR100 = _Release(
    "cifar100", "cifar-100-binary.tar.gz", "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    train=("train.bin",), test="test.bin", label_bytes=2,
    names={"coarse": "coarse_label_names.txt", "fine": "fine_label_names.txt"}, classes={"coarse": 20, "fine": 100},
)

# The python version's member names: an archive holding them is the pickle kind, whatever its file name.
_PICKLE_MARKS = ("cifar-10-batches-py", "cifar-100-python")
_TAR_FAULTS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _pickle_refusal(path: Path, release: _Release) -> DataError:
    return DataError(
        f"{path}: the python (pickle) version of {release.name}; medlite never unpickles a file it is given: "
        f"download the binary version {release.archive} from {release.url} and put it in the data root"
    )


def locate(release: _Release, data_root: Path, archive: str | None) -> Path:
    """The binary archive: `data.archive` if given, else the release's name in DATA_ROOT or DATA_ROOT/cifar.
    Only the python archive there, or none: a DataError naming the file and where to get it."""
    if archive:
        path = resolve_file(archive, data_root, "data.archive")
        if path.name == release.python_archive:
            raise _pickle_refusal(path, release)
        return path
    places = (data_root, data_root / "cifar")
    for folder in places:
        if (folder / release.archive).is_file():
            return folder / release.archive
    for folder in places:
        if (folder / release.python_archive).is_file():
            raise _pickle_refusal(folder / release.python_archive, release)
    raise DataError(f"{release.archive}: not found in {data_root} (nor {data_root / 'cifar'}); download it from "
                    f"{release.url} and put it there (offline: medlite does not fetch it)")


def read_archive(path: Path, release: _Release) -> dict[str, bytes]:
    """Every member the release needs, by base name, read from the .tar.gz without extracting it."""
    wanted = set(release.train) | {release.test} | set(release.names.values())
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if any(mark in parts for mark in _PICKLE_MARKS):
                    raise _pickle_refusal(path, release)
                base = PurePosixPath(member.name).name
                if member.isfile() and base in wanted:
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:
                        raise DataError(f"{path}: {member.name} is cut short ({len(data)} of {member.size} bytes): "
                                        f"the archive is truncated; download it again from {release.url}")
                    found[base] = data
    except DataError:
        raise
    except _TAR_FAULTS as err:
        raise DataError(f"{path}: not a readable .tar.gz ({' '.join(str(err).split())[:120] or type(err).__name__}): "
                        f"truncated or damaged; download it again from {release.url}") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{path}: no {missing[0]} in the archive (is it {release.archive}, the official binary version?)")
    return found


def decode(data: bytes, release: _Release, member: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Records -> (uint8 images N x 32 x 32 x 3, labels uint8 N x label_bytes)."""
    if not data or len(data) % release.record:
        raise DataError(f"{path}: {member} holds {len(data)} bytes, not a whole number of {release.record}-byte "
                        f"records: truncated or not {release.archive}")
    records = np.frombuffer(data, np.uint8).reshape(-1, release.record)
    labels = records[:, : release.label_bytes]
    # Each record's pixels are channel planes (R, G, B), each 32 rows of 32: to N x H x W x C.
    images = records[:, release.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def label_names(data: bytes, member: str, path: Path, count: int) -> list[str]:
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != count:
        raise DataError(f"{path}: {member} names {len(names)} classes, not {count}")
    return names


class _CifarData(DataConfig):
    archive: str | None = Field(None, description="the binary .tar.gz (default: its official name in the data root "
                                                  "or its cifar/ folder)")
    val_size: int = Field(5000, ge=1, description="images held out of train for validation (seeded, stratified by class)")
    val_seed: int = Field(0, description="seed of the validation hold-out (fixed across a study's seeds: paired comparisons)")
    class_map: dict[str, str] | None = Field(None, description="rename classes (official name -> class name)")


class Cifar10Data(_CifarData):
    """CIFAR-10: the official binary archive (cifar-10-binary.tar.gz), 10 classes, 32 px RGB."""

    source: Literal["cifar10"] = "cifar10"


class Cifar100Data(_CifarData):
    """CIFAR-100: the official binary archive (cifar-100-binary.tar.gz), 100 fine (or 20 coarse) classes."""

    source: Literal["cifar100"] = "cifar100"
    labels: Literal["fine", "coarse"] = Field("fine", description="the 100 fine classes or the 20 superclasses")


def _load(cfg: _CifarData, data_root: Path, release: _Release) -> Source:
    from medlite.data.dataset import rename_classes

    kind = getattr(cfg, "labels", "fine")
    column = 0 if release.label_bytes == 1 or kind == "coarse" else 1
    path = locate(release, data_root, cfg.archive)
    members = read_archive(path, release)
    names = label_names(members[release.names[kind]], release.names[kind], path, release.classes[kind])
    parts: dict[str, Part] = {}
    for split, files in (("train", release.train), ("test", (release.test,))):
        images, labels, ids = [], [], []
        for member in files:
            x, y = decode(members[member], release, member, path)
            y = y[:, column].astype(np.int64)
            if len(y) and y.max() >= len(names):
                raise DataError(f"{path}: {member} record {int(np.argmax(y >= len(names)))} has label {int(y.max())}, "
                                f"outside the {len(names)} classes")
            images.append(x)
            labels.append(y)
            ids += [f"{member}[{i}]" for i in range(len(y))]
        parts[split] = Part(np.concatenate(labels), np.array(ids, dtype=object), images=np.concatenate(images))
    train = parts["train"]
    if cfg.val_size >= len(train):
        raise DataError(f"data.val_size: {cfg.val_size} is not fewer than the {len(train)} training images of {path.name}")
    held = stratified_split(train.labels, {"train": 1 - cfg.val_size / len(train), "val": cfg.val_size / len(train)},
                            cfg.val_seed)
    parts["train"], parts["val"] = train.take(held["train"]), train.take(held["val"])
    return Source(
        name=release.name if kind == "fine" else f"{release.name}_coarse",
        origin=str(path),
        class_names=rename_classes(names, cfg.class_map, release.name),
        parts=parts,
        native_channels=3,
        native_size=32,
        given_split=(f"official train/test; val: {len(held['val'])} images held out of train "
                     f"(seeded stratified, val_seed {cfg.val_seed})"),
    )


def load_cifar10(cfg: Cifar10Data, data_root: Path) -> Source:
    return _load(cfg, data_root, CIFAR10)


def load_cifar100(cfg: Cifar100Data, data_root: Path) -> Source:
    return _load(cfg, data_root, CIFAR100)


register_source("cifar10", Cifar10Data, load_cifar10)
register_source("cifar100", Cifar100Data, load_cifar100)
