"""CIFAR-10 / CIFAR-100 from the official binary archives (issue 19, item 5): tiny fake archives in
the official layout, with known pixels and labels, parsed back; the python (pickle) kind, a truncated
archive and a missing one refused with one line naming the file."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from medlite.data import load_dataset
from medlite.data.config import DataConfig
from medlite.errors import DataError, UsageError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pixels(tag: int) -> np.ndarray:
    """A record's 3072 pixel bytes: red plane = tag, green = a ramp (row * 32 + col) % 256, blue = 255 - tag."""
    red = np.full(1024, tag, np.uint8)
    green = (np.arange(1024) % 256).astype(np.uint8)
    blue = np.full(1024, 255 - tag, np.uint8)
    return np.concatenate([red, green, blue])


def _records(labels: list[tuple[int, ...]], tag0: int) -> bytes:
    return b"".join(bytes(lab) + _pixels(tag0 + i).tobytes() for i, lab in enumerate(labels))


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cifar10_archive(root: Path, per_batch: int = 4) -> Path:
    """5 train batches of `per_batch` records (labels cycling over the 10 classes), a test batch of 10."""
    members, k = {}, 0
    for b in range(1, 6):
        labels = [((k + i) % 10,) for i in range(per_batch)]
        members[f"cifar-10-batches-bin/data_batch_{b}.bin"] = _records(labels, tag0=k)
        k += per_batch
    members["cifar-10-batches-bin/test_batch.bin"] = _records([(i % 10,) for i in range(10)], tag0=200)
    members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    root.mkdir(parents=True, exist_ok=True)
    return _tar(root / "cifar-10-binary.tar.gz", members)


def cifar100_archive(root: Path) -> Path:
    """train: 200 records (fine label i % 100, coarse fine // 5); test: 100."""
    train = [((i % 100) // 5, i % 100) for i in range(200)]
    test = [((i % 100) // 5, i % 100) for i in range(100)]
    members = {
        "cifar-100-binary/train.bin": _records(train, tag0=0),
        "cifar-100-binary/test.bin": _records(test, tag0=0),
        "cifar-100-binary/fine_label_names.txt": "\n".join(f"fine{i}" for i in range(100)).encode(),
        "cifar-100-binary/coarse_label_names.txt": "\n".join(f"coarse{i}" for i in range(20)).encode(),
    }
    root.mkdir(parents=True, exist_ok=True)
    return _tar(root / "cifar-100-binary.tar.gz", members)


def test_cifar10_binary_records_parse_to_images_labels_and_a_stratified_val(tmp_path):
    cifar10_archive(tmp_path)
    data = load_dataset(DataConfig(source="cifar10", val_size=10), tmp_path, seed=0)
    assert data.class_names == CIFAR10_NAMES and data.num_classes == 10
    assert {k: len(s) for k, s in data.splits.items()} == {"train": 10, "val": 10, "test": 10}
    assert data.image_size == 32 and data.channels == 3
    # the hold-out is stratified: one image of each class in val (2 per class in the 20 training records)
    assert sorted(data.splits["val"].labels.tolist()) == list(range(10))
    assert sorted(data.splits["train"].labels.tolist()) == list(range(10))
    assert "official train/test; val: 10 images held out of train" in data.split_origin
    # every image is the record its id names: pixel planes to H x W x C, row-major
    for split in data.splits.values():
        for image, label, ident in zip(split.images, split.labels, split.ids):
            member, index = ident[:-1].split("[")
            if member == "test_batch.bin":
                tag, expected = 200 + int(index), int(index) % 10
            else:
                batch = int(member.removeprefix("data_batch_").removesuffix(".bin"))
                tag = (batch - 1) * 4 + int(index)
                expected = tag % 10
            assert label == expected, ident
            assert image[0, 0].tolist() == [tag, 0, 255 - tag], ident
            assert image[1, 2].tolist() == [tag, 34, 255 - tag], ident  # row 1, column 2 of the green ramp
    # the same val_seed gives the same hold-out whatever the recipe seed; another val_seed another one
    again = load_dataset(DataConfig(source="cifar10", val_size=10), tmp_path, seed=7)
    assert again.splits["val"].ids.tolist() == data.splits["val"].ids.tolist()
    other = load_dataset(DataConfig(source="cifar10", val_size=10, val_seed=1), tmp_path, seed=0)
    assert other.splits["val"].ids.tolist() != data.splits["val"].ids.tolist()


def test_cifar100_fine_and_coarse_labels(tmp_path):
    cifar100_archive(tmp_path / "cifar")  # DATA_ROOT/cifar/ is looked in too
    fine = load_dataset(DataConfig(source="cifar100", val_size=100), tmp_path, seed=0)
    assert fine.num_classes == 100 and fine.class_names[7] == "fine7"
    assert {k: len(s) for k, s in fine.splits.items()} == {"train": 100, "val": 100, "test": 100}
    assert np.bincount(fine.splits["val"].labels, minlength=100).tolist() == [1] * 100
    coarse = load_dataset(DataConfig(source="cifar100", labels="coarse", val_size=20), tmp_path, seed=0)
    assert coarse.num_classes == 20 and coarse.name == "cifar100_coarse"
    test = coarse.splits["test"]
    assert test.labels.tolist() == [i // 5 for i in range(100)]  # the coarse byte, not the fine one


def test_python_pickle_archive_is_refused(tmp_path):
    _tar(tmp_path / "cifar-10-python.tar.gz", {"cifar-10-batches-py/data_batch_1": b"\x80\x04pickle"})
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: the python \(pickle\) version.*never unpickles.*"
                                        r"cifar-10-binary\.tar\.gz from https://www\.cs\.toronto\.edu/~kriz/"):
        load_dataset(DataConfig(source="cifar10", val_size=10), tmp_path, seed=0)
    # the pickle kind under the binary archive's name is found by its members
    (tmp_path / "cifar-10-python.tar.gz").rename(tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: the python \(pickle\) version"):
        load_dataset(DataConfig(source="cifar10", val_size=10), tmp_path, seed=0)


def test_truncated_and_missing_archives_are_refused_naming_the_file(tmp_path):
    path = cifar10_archive(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: not a readable \.tar\.gz .*truncated or damaged"):
        load_dataset(DataConfig(source="cifar10", val_size=10), tmp_path, seed=0)
    # a member that is not whole records (cut inside the tar, the gzip intact)
    bad = tmp_path / "bad"
    members = {f"b/data_batch_{i}.bin": _records([(i,)], 0) for i in range(1, 6)}
    members["b/test_batch.bin"] = _records([(0,), (1,)], 0)[:-5]
    members["b/batches.meta.txt"] = "\n".join(CIFAR10_NAMES).encode()
    bad.mkdir()
    _tar(bad / "cifar-10-binary.tar.gz", members)
    with pytest.raises(DataError, match=r"test_batch\.bin holds 6141 bytes, not a whole number of 3073-byte records"):
        load_dataset(DataConfig(source="cifar10", val_size=2), bad, seed=0)
    with pytest.raises(DataError, match=r"cifar-100-binary\.tar\.gz: not found in .* download it from "
                                        r"https://www\.cs\.toronto\.edu/~kriz/cifar-100-binary\.tar\.gz"):
        load_dataset(DataConfig(source="cifar100"), tmp_path / "empty", seed=0)
    assert issubclass(DataError, UsageError)  # exit 2 at the command line (medlite.errors)


def test_cifar_resnets_of_the_dkd_paper():
    import torch

    from medlite.models.registry import count_params, create
    from medlite.models.taps import stage_paths

    small, large = create("resnet8x4", 100, 3, 32), create("resnet32x4", 100, 3, 32)
    # CRD / DKD report 1.23 M and 7.43 M parameters
    assert count_params(small) == 1_233_540 and count_params(large) == 7_433_860
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert stage_paths(large) == ["stages.0", "stages.1", "stages.2"]
