import numpy as np
import pytest
from PIL import Image

from medlite.data import load_dataset
from medlite.data.preprocess import convert_image, match_channels
from medlite.data.splits import stratified_split
from medlite.errors import DataError, UsageError
from medlite.recipe import DataConfig


def test_medmnist_official_split(data_root):
    ds = load_dataset(DataConfig(flag="breastmnist"), data_root, seed=0)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [546, 78, 156]
    assert ds.class_names == ["malignant", "normal, benign"]
    assert ds.channels == 1 and ds.image_size == 28
    assert ds.splits["train"].images.dtype == np.uint8


def test_medmnist_resize_and_rgb(data_root):
    ds = load_dataset(DataConfig(flag="breastmnist", image_size=32, channels=3, limit=20), data_root, seed=0)
    assert ds.splits["train"].images.shape == (20, 32, 32, 3)
    # limit keeps both classes
    assert len(np.unique(ds.splits["train"].labels)) == 2


def test_medmnist_missing_file_offline_names_file_and_folder(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(flag="pneumoniamnist", size=64), tmp_path, seed=0)
    message = str(info.value)
    assert "pneumoniamnist_64.npz" in message and str(tmp_path) in message


@pytest.mark.parametrize("flag, words", [("organmnist3d", "3D")])
def test_unsupported_flags(tmp_path, flag, words):
    with pytest.raises(DataError, match="not supported yet") as info:
        load_dataset(DataConfig(flag=flag), tmp_path, seed=0)
    assert words in str(info.value)


def test_chestmnist_is_supported_and_missing_offline_names_its_file(tmp_path, monkeypatch):
    """Multi-label ChestMNIST is trainable (issue 17): without its file, the usual offline message."""
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(flag="chestmnist"), tmp_path, seed=0)
    assert "not supported yet" not in str(info.value) and "chestmnist.npz" in str(info.value)


def test_stratified_split_is_seeded_and_disjoint():
    labels = np.array([0] * 70 + [1] * 30)
    a = stratified_split(labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    b = stratified_split(labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    together = np.concatenate(list(a.values()))
    assert len(together) == len(set(together)) == 100
    assert (labels[a["test"]] == 1).sum() == 6 and (labels[a["test"]] == 0).sum() == 14


def test_image_modes_convert_consistently():
    grey = np.linspace(0, 255, 64).round().astype(np.uint8).reshape(8, 8)  # full range: 16-bit rescale is exact
    as_l = convert_image(Image.fromarray(grey, "L"), 1, 8)
    as_rgb = convert_image(Image.fromarray(np.stack([grey] * 3, -1), "RGB"), 1, 8)
    as_rgba = convert_image(Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)]), "RGBA"), 1, 8)
    as_p = convert_image(Image.fromarray(grey, "L").convert("P"), 1, 8)
    as_16 = convert_image(Image.fromarray(grey.astype(np.uint16) * 257), 1, 8)
    for other in (as_rgb, as_rgba, as_p):
        assert np.array_equal(as_l, other)
    assert np.abs(as_16.astype(int) - as_l.astype(int)).max() <= 1
    assert convert_image(Image.fromarray(grey, "L"), 3, 16).shape == (16, 16, 3)


def test_match_channels_luma_equals_pillow():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    ours = match_channels(rgb, 1)[..., 0]
    pillow = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in rgb])
    assert np.abs(ours.astype(int) - pillow.astype(int)).max() <= 1


def _write_folder(root, layout):
    rng = np.random.default_rng(0)
    for rel, count in layout.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(folder / f"{i}.png")


def test_folder_flat_gets_seeded_stratified_split(tmp_path):
    _write_folder(tmp_path, {"a": 20, "b": 10})
    cfg = DataConfig(source="folder", root=str(tmp_path), image_size=16)
    ds = load_dataset(cfg, tmp_path, seed=0)
    assert ds.class_names == ["a", "b"]
    assert sum(len(s) for s in ds.splits.values()) == 30
    assert ds.splits["test"].images.shape[1:] == (16, 16, 1)
    again = load_dataset(cfg, tmp_path, seed=0)
    assert np.array_equal(ds.splits["test"].images, again.splits["test"].images)


def test_folder_presplit_with_valid_alias(tmp_path):
    _write_folder(tmp_path, {"train/a": 6, "train/b": 6, "valid/a": 2, "valid/b": 2, "test/a": 3, "test/b": 3})
    ds = load_dataset(DataConfig(source="folder", root=str(tmp_path)), tmp_path, seed=0)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [12, 4, 6]
    assert ds.split_origin == "folders"


def test_folder_class_mismatch_is_refused_then_mapped(tmp_path):
    _write_folder(tmp_path, {"train/benign": 4, "train/malignant": 4, "test/benign": 2, "test/Malignant": 2})
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source="folder", root=str(tmp_path)), tmp_path, seed=0)
    assert "missing in test: malignant" in str(info.value) and "only in test: Malignant" in str(info.value)
    ds = load_dataset(DataConfig(source="folder", root=str(tmp_path), class_map={"Malignant": "malignant"}), tmp_path, 0)
    assert ds.class_names == ["benign", "malignant"]


def test_folder_unreadable_image_named_or_skipped(tmp_path):
    _write_folder(tmp_path, {"a": 10, "b": 10})
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source="folder", root=str(tmp_path)), tmp_path, seed=0)
    assert "broken.png" in str(info.value)
    ds = load_dataset(DataConfig(source="folder", root=str(tmp_path), skip_bad=True), tmp_path, seed=0)
    assert ds.summary()["skipped_images"] == 1


def test_folder_one_class_or_empty(tmp_path):
    _write_folder(tmp_path, {"only": 5})
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path)), tmp_path, seed=0)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(source="folder", root=str(empty)), tmp_path, seed=0)


def test_busi_folder(busi_root):
    ds = load_dataset(DataConfig(source="folder", root=str(busi_root), image_size=32, limit=60), busi_root, seed=0)
    assert ds.class_names == ["benign", "malignant", "normal"]
    assert ds.channels == 3  # a few BUSI images are colour
    assert ds.splits["train"].images.shape[1:] == (32, 32, 3)


def test_arrays_with_one_hot_labels(tmp_path, breast_npz):
    x = breast_npz["train_images"][:60]
    y = breast_npz["train_labels"][:60, 0]
    np.save(tmp_path / "X_train.npy", x.astype(np.float32) / 255)  # float images in [0, 1]
    np.save(tmp_path / "y_train.npy", np.eye(2)[y])  # one-hot
    ds = load_dataset(DataConfig(source="arrays", root=str(tmp_path)), tmp_path, seed=0)
    assert sum(len(s) for s in ds.splits.values()) == 60
    restored = np.concatenate([ds.splits[s].images for s in ("train", "val", "test")])
    assert restored.dtype == np.uint8 and restored.shape[1:] == (28, 28, 1)


def test_arrays_missing_file(tmp_path):
    with pytest.raises(DataError, match="X_train.npy"):
        load_dataset(DataConfig(source="arrays", root=str(tmp_path)), tmp_path, seed=0)


# -- arrays that are wrong must not train ----------------------------------------------------


def _save_arrays(root, x, y, split="train"):
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"X_{split}.npy", x)
    np.save(root / f"y_{split}.npy", y)


def _load_arrays(root):
    return load_dataset(DataConfig(source="arrays", root=str(root)), root, seed=0)


def _grey(n=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize(
    "x, y, file, fragment",
    [
        (np.full((40, 8, 8), np.inf, np.float32), np.arange(40) % 2, "X_train.npy", "infinite pixel value(s) in 40 of 40 images"),
        (np.where(np.arange(40)[:, None, None] == 5, np.nan, 0.5), np.arange(40) % 2, "X_train.npy", "NaN pixel value(s) in 1 of 40 images (first: image 5)"),
        (np.random.default_rng(0).standard_normal((40, 8, 8)), np.arange(40) % 2, "X_train.npy", "must lie in [0, 1] or [0, 255]"),
        (_grey().astype(np.uint16) * 257, np.arange(40) % 2, "X_train.npy", "must lie in [0, 1] or [0, 255]"),
        (_grey(), np.arange(40) % 2 + 1, "y_train.npy", "no image has label 0 of 0..2"),
        (_grey(), np.arange(40) % 2 * 3, "y_train.npy", "no image has label 1, 2 of 0..3"),
        (_grey(), np.arange(40) % 2 - 1, "y_train.npy", "negative label -1"),
        (_grey(), np.where(np.arange(40) == 0, np.nan, np.arange(40) % 2), "y_train.npy", "NaN or infinite"),
        (_grey(), (np.arange(40) % 2) + 0.5, "y_train.npy", "whole numbers"),
        (_grey(), np.array(["a", "b"] * 20), "y_train.npy", "dtype <U1"),
        (_grey(), np.arange(41) % 2, "y_train.npy", "41 labels for 40 images in X_train.npy"),
        (np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int64), "X_train.npy", "no images"),
        (_grey().reshape(40, 64), np.arange(40) % 2, "X_train.npy", "expected images of shape"),
    ],
)
def test_bad_arrays_raise_naming_file_and_fault(tmp_path, x, y, file, fragment):
    _save_arrays(tmp_path, x, y)
    with pytest.raises(DataError) as info:
        _load_arrays(tmp_path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / file)) and fragment in message and "\n" not in message, message


def test_arrays_label_only_in_test_is_out_of_range(tmp_path):
    _save_arrays(tmp_path, _grey(), np.arange(40) % 2)
    _save_arrays(tmp_path, _grey(10, 1), np.array([0, 1, 2, 0, 1, 0, 1, 0, 1, 0]), "test")
    with pytest.raises(DataError, match=r"y_test\.npy: label 2 never occurs in y_train\.npy"):
        _load_arrays(tmp_path)


def test_arrays_float_images_scaled_not_clipped(tmp_path):
    grey = _grey()
    _save_arrays(tmp_path, grey.astype(np.float64) / 255, np.arange(40) % 2)  # [0, 1] floats
    ds = _load_arrays(tmp_path)
    every = np.concatenate([ds.splits[s].images[..., 0] for s in ("train", "val", "test")])
    assert sorted(map(bytes, every)) == sorted(map(bytes, grey))  # the same images, exactly


def test_arrays_unread_file_and_class_map_typo(tmp_path):
    _save_arrays(tmp_path, _grey(), np.arange(40) % 2)
    cfg = DataConfig(source="arrays", root=str(tmp_path), class_map={"2": "normal"})
    with pytest.raises(DataError, match=r"data.class_map: '2' is not a label"):
        load_dataset(cfg, tmp_path, seed=0)
    (tmp_path / "y_train.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"y_train\.npy: not a readable \.npy array"):
        _load_arrays(tmp_path)


# -- MedMNIST files: damaged files are named; the official MD5 is checked once -------------


from medlite.data import medmnist  # noqa: E402


@pytest.mark.parametrize("damage", ["truncated", "zero", "keyless", "other_keys", "single_array", "bad_crc", "text"])
def test_damaged_npz_names_the_file(tmp_path, breast_npz, data_root, damage):
    good = (data_root / "breastmnist.npz").read_bytes()
    path = tmp_path / "breastmnist.npz"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "zero":
        path.write_bytes(b"")
    elif damage == "keyless":
        np.savez(path)
    elif damage == "other_keys":
        np.savez(path, images=np.zeros(3))
    elif damage == "single_array":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    elif damage == "bad_crc":
        data = bytearray(good)
        data[6000:6100] = bytes(100)
        path.write_bytes(bytes(data))
    else:
        path.write_text("not an archive\n")
    with pytest.raises(DataError) as info:
        medmnist.read_npz(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message


@pytest.fixture
def fresh_md5_memory(tmp_path, monkeypatch):
    """An empty MD5 cache of our own, and a counter of the files actually hashed."""
    monkeypatch.setenv("MEDLITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(medmnist, "_verified_here", {})
    hashed = []
    real = medmnist._md5
    monkeypatch.setattr(medmnist, "_md5", lambda path: hashed.append(path) or real(path))
    return hashed


def test_official_md5_checked_once_and_remembered(tmp_path, data_root, fresh_md5_memory, monkeypatch):
    import hashlib
    import shutil

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy2(data_root / "breastmnist.npz", root / "breastmnist.npz")
    expected = medmnist.flag_info("breastmnist")["MD5"]
    assert hashlib.md5((root / "breastmnist.npz").read_bytes()).hexdigest() == expected  # the real file is official
    assert medmnist.locate("breastmnist", 28, root) == root / "breastmnist.npz"
    assert len(fresh_md5_memory) == 1
    monkeypatch.setattr(medmnist, "_verified_here", {})  # as a new process: only the file on disk remembers
    medmnist.locate("breastmnist", 28, root)
    assert len(fresh_md5_memory) == 1
    assert (tmp_path / "cache" / "verified-md5.json").is_file()
    # A file that changed (new mtime) is hashed again, and a damaged one is refused with both hashes.
    data = bytearray((root / "breastmnist.npz").read_bytes())
    data[-1] ^= 0xFF
    (root / "breastmnist.npz").write_bytes(bytes(data))
    actual = hashlib.md5(bytes(data)).hexdigest()
    with pytest.raises(DataError) as info:
        medmnist.locate("breastmnist", 28, root)
    assert len(fresh_md5_memory) == 2
    message = str(info.value)
    assert str(root / "breastmnist.npz") in message and actual in message and expected in message


def test_md5_check_works_without_a_writable_cache(tmp_path, data_root, monkeypatch):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("MEDLITE_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(medmnist, "_verified_here", {})
    assert medmnist.locate("breastmnist", 28, data_root) == data_root / "breastmnist.npz"


def test_failed_download_creates_no_data_root(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "not" / "here"
    with pytest.raises(DataError, match="download failed"):
        medmnist.locate("breastmnist", 28, root)
    assert not (tmp_path / "not").exists()


def test_labels_outside_the_classes_are_refused():
    from medlite.data import Split, _check

    splits = {s: Split(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1])) for s in ("train", "val", "test")}
    _check(splits, ["a", "b"])
    splits["val"] = Split(np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 2]))
    with pytest.raises(DataError, match="label 2 in the val split is outside the 2 classes"):
        _check(splits, ["a", "b"])


# -- the data section: one model per registered source; old resolved recipes still load ----------


OLD_FLAT = {  # a resolved recipe's data section from before sources had models of their own
    "flag": "breastmnist", "size": 28, "root": None, "image_size": None, "channels": None,
    "split": {"train": 0.7, "val": 0.1, "test": 0.2}, "class_map": None, "skip_bad": False, "limit": None,
    "fold": None, "augment": "light", "balance": "none", "mean": 0.5, "std": 0.5,
}


@pytest.mark.parametrize("source, extra", [("medmnist", {}), ("folder", {"root": "BUSI"}), ("arrays", {"root": "x"})])
def test_old_resolved_data_sections_still_load(source, extra):
    from medlite.data.config import canonical_data
    from medlite.recipe import validate_tree

    old = {**OLD_FLAT, "source": source, **extra}
    recipe = validate_tree({"data": old}, "recipe.resolved.yaml")
    assert type(recipe.data).__module__ == f"medlite.data.{source}" and recipe.data.source == source
    assert canonical_data(old) == recipe.data.model_dump(mode="json")
    # a key another source owns, at a value that means something, is refused
    key, value = ("flag", "dermamnist") if source != "medmnist" else ("skip_bad", True)
    with pytest.raises(UsageError, match=rf"unknown key 'data\.{key}' for this data source"):
        validate_tree({"data": {**old, key: value}}, "r.yaml")


def test_data_config_builds_the_named_sources_model():
    from medlite.data.folder import FolderData
    from medlite.data.medmnist import MedMNISTData

    assert type(DataConfig()) is MedMNISTData and type(DataConfig(source="folder", root="x")) is FolderData
    assert DataConfig.model_validate({"source": "folder", "root": "x"}) == FolderData(root="x")
    assert type(DataConfig.model_validate({})) is MedMNISTData
    with pytest.raises(DataError, match=r"unknown data source 'dicom'; known: arrays, cifar10, cifar100, folder, medmnist, table"):
        DataConfig(source="dicom")


def test_split_origin_says_how_each_source_was_split(tmp_path, data_root):
    assert load_dataset(DataConfig(flag="breastmnist", limit=10), data_root, seed=0).split_origin == "official"
    _save_arrays(tmp_path / "arrays", _grey(), np.arange(40) % 2)
    assert _load_arrays(tmp_path / "arrays").split_origin == "seeded stratified 70/10/20"
    _write_folder(tmp_path / "folder", {"train/a": 6, "train/b": 6, "test/a": 3, "test/b": 3})
    ds = load_dataset(DataConfig(source="folder", root=str(tmp_path / "folder")), tmp_path, seed=0)
    assert ds.split_origin == "folders" and len(ds.splits["val"]) > 0  # val carved from train
