import numpy as np
import pytest
from PIL import Image

from medlite.data import load_dataset
from medlite.data.preprocess import convert_image, match_channels
from medlite.data.splits import stratified_split
from medlite.errors import DataError
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


@pytest.mark.parametrize("flag, words", [("chestmnist", "multi-label"), ("organmnist3d", "3D")])
def test_unsupported_flags(tmp_path, flag, words):
    with pytest.raises(DataError, match="not supported yet") as info:
        load_dataset(DataConfig(flag=flag), tmp_path, seed=0)
    assert words in str(info.value)


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
