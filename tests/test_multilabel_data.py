"""Multi-label data (issue 17): the NIH table and its recipe, ChestMNIST-like files, multi-hot arrays,
grouped splits, the pipeline's loading (and the switch that would refuse it), and bad input refused in one line (exit 2)."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from PIL import Image

from medlite import task as task_module
from medlite.data import load_dataset
from medlite.errors import DataError, UsageError
from medlite.recipe import DataConfig, load_recipe, validate_tree
from medlite.task import MULTI_LABEL_TASK, task_of


def _data(section: dict, **more):
    return validate_tree({"data": {**section, **more}}, "test.yaml").data


def _disjoint_groups(ds) -> bool:
    groups = {name: set(split.groups) for name, split in ds.splits.items()}
    names = list(groups)
    return all(not (groups[a] & groups[b]) for i, a in enumerate(names) for b in names[i + 1:])


def _run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from medlite import cli

    monkeypatch.setattr(sys, "argv", ["medlite", *args])
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


# -- the NIH table and its built-in recipe ------------------------------------------------------


def test_nih_recipe_loads_by_patient_with_every_label_in_train(shared_root):
    recipe = load_recipe("nih_chestxray")
    ds = load_dataset(recipe.data, shared_root, recipe.seed, multilabel=True)
    assert task_of(ds) is MULTI_LABEL_TASK and ds.num_classes == 14 and ds.image_size == 64
    assert ds.group_column == "patient_id" and "by patient_id" in ds.split_origin and _disjoint_groups(ds)
    for split in ds.splits.values():
        assert split.labels.dtype == np.uint8 and split.labels.shape == (len(split), 14)
    assert (ds.splits["train"].labels.sum(axis=0) > 0).all()
    assert sum(len(s) for s in ds.splits.values()) == 1000


def test_medlite_data_reads_the_nih_recipe(shared_root, monkeypatch, capsys):
    code, out, err = _run_cli(monkeypatch, capsys, "data", "nih_chestxray", "--data-root", str(shared_root))
    assert code == 0, err
    assert "14 labels (multi-label)" in out and "by patient_id" in out and "Hernia" in out


def test_the_pipeline_loads_multi_label_data_for_training(shared_root):
    """MULTILABEL_TRAINING is on (issue 17): the pipeline's load gives the multi-hot NIH data, and the
    switch is still the one place that would refuse it."""
    assert task_module.MULTILABEL_TRAINING
    recipe = load_recipe("nih_chestxray")
    ds = load_dataset(_data(recipe.data.model_dump(), image_size=16, limit=60), shared_root, recipe.seed)
    assert ds.multilabel and ds.splits["train"].labels.shape[1] == 14
    assert ds.preprocess.activation == "sigmoid" and ds.preprocess.multilabel


def test_the_switch_off_refuses_multi_label_in_one_line(shared_root, monkeypatch):
    monkeypatch.setattr(task_module, "MULTILABEL_TRAINING", False)
    recipe = load_recipe("nih_chestxray")
    with pytest.raises(DataError) as info:
        load_dataset(recipe.data, shared_root, recipe.seed)
    message = str(info.value)
    assert isinstance(info.value, UsageError) and "\n" not in message
    assert "labels.csv" in message and "multi-label data (14 labels" in message and "not supported yet" in message


# -- ChestMNIST-like files ------------------------------------------------------------------------


def _chest_npz(root, width: int = 14, n: int = 40, bad_value: int | None = None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = rng.integers(0, 2, (n, width)).astype(np.uint8)
        labels[0] = 1  # every label positive somewhere, and
        labels[1] = 0  # negative somewhere
        if bad_value is not None and split == "val":
            labels[2, 3] = bad_value
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    path = root / "chestmnist.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture
def unofficial_md5(monkeypatch):
    """A synthetic file is not the official release: skip only the MD5 comparison."""
    from medlite.data import medmnist

    monkeypatch.setattr(medmnist, "verify_md5", lambda path, expected: None)


def test_chestmnist_file_loads_as_14_multi_hot_labels(tmp_path, unofficial_md5):
    _chest_npz(tmp_path)
    ds = load_dataset(DataConfig(flag="chestmnist"), tmp_path, seed=0, multilabel=True)
    assert ds.multilabel and ds.num_classes == 14 and ds.class_names[0] == "atelectasis"
    assert ds.split_origin == "official" and [len(ds.splits[s]) for s in ("train", "val", "test")] == [40, 40, 40]
    assert ds.splits["val"].labels.shape == (40, 14) and ds.splits["val"].labels.dtype == np.uint8


def test_chestmnist_loads_for_training(tmp_path, unofficial_md5):
    """Without `multilabel=True` (the pipeline's load): ChestMNIST is trainable now, multi-hot labels."""
    _chest_npz(tmp_path)
    ds = load_dataset(DataConfig(flag="chestmnist"), tmp_path, seed=0)
    assert ds.multilabel and ds.splits["train"].labels.shape == (40, 14)


def test_chestmnist_missing_offline_for_training_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(flag="chestmnist"), tmp_path, seed=0)
    assert "chestmnist.npz: not found in" in str(info.value) and str(tmp_path) in str(info.value)


def test_chestmnist_missing_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(flag="chestmnist"), tmp_path, seed=0, multilabel=True)
    assert "chestmnist.npz: not found in" in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("width, bad, words", [(13, None, "has 13 columns, not the 14 labels"), (14, 2, "holds 2")])
def test_chestmnist_wrong_width_or_values_are_refused(tmp_path, unofficial_md5, width, bad, words):
    path = _chest_npz(tmp_path, width=width, bad_value=bad)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(flag="chestmnist"), tmp_path, seed=0, multilabel=True)
    assert str(path) in str(info.value) and words in str(info.value)


# -- multi-hot arrays -----------------------------------------------------------------------------


def _arrays(root, widths=(3, 3, 3), n: int = 30, value: int = 1, missing_in_train: int | None = None):
    rng = np.random.default_rng(1)
    for split, width in zip(("train", "val", "test"), widths):
        y = rng.integers(0, 2, (n, width)).astype(np.uint8)
        y[0], y[1] = 1, 0
        if missing_in_train is not None and split == "train":
            y[:, missing_in_train] = 0
        if value != 1 and split == "test":
            y[4, 0] = value
        np.save(root / f"X_{split}.npy", rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
        np.save(root / f"y_{split}.npy", y)
    return root


def test_multi_hot_arrays_load_with_their_label_names(tmp_path):
    _arrays(tmp_path)
    ds = load_dataset(_data({"source": "arrays", "root": str(tmp_path), "multilabel": True,
                             "label_names": ["effusion", "mass", "nodule"]}), tmp_path, 0, multilabel=True)
    assert ds.multilabel and ds.class_names == ["effusion", "mass", "nodule"]
    assert ds.splits["test"].labels.shape == (30, 3)


@pytest.mark.parametrize("case", ["width between splits", "width vs names", "not 0/1", "never in train", "names without multilabel"])
def test_bad_multi_hot_arrays_are_refused_naming_what(tmp_path, case):
    section = {"source": "arrays", "root": str(tmp_path), "multilabel": True}
    if case == "width between splits":
        _arrays(tmp_path, widths=(3, 2, 3))
        words = [str(tmp_path / "y_val.npy"), "2 columns, y_train.npy 3"]
    elif case == "width vs names":
        _arrays(tmp_path)
        section["label_names"] = ["a", "b"]
        words = [str(tmp_path / "y_train.npy"), "3 columns, data.label_names 2"]
    elif case == "not 0/1":
        _arrays(tmp_path, value=3)
        words = [str(tmp_path / "y_test.npy"), "must be 0 or 1, found 3"]
    elif case == "never in train":
        _arrays(tmp_path, missing_in_train=1)
        words = ["label '1' never occurs in the train split"]
    else:
        _arrays(tmp_path)
        section = {"source": "arrays", "root": str(tmp_path), "label_names": ["a", "b", "c"]}
        with pytest.raises(UsageError, match="set multilabel: true"):
            _data(section)
        return
    with pytest.raises(DataError) as info:
        load_dataset(_data(section), tmp_path, 0, multilabel=True)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "\n" not in str(info.value)


def test_multi_hot_y_without_the_key_says_how(tmp_path):
    _arrays(tmp_path)
    with pytest.raises(DataError, match="multi-hot rows: set data.multilabel: true"):
        load_dataset(_data({"source": "arrays", "root": str(tmp_path)}), tmp_path, 0)


# -- tables: bad labels, grouped splits and folds ------------------------------------------------


def _table(root, rows: list[list], columns: list[str]):
    folder = root / "img"
    folder.mkdir(exist_ok=True)
    for row in rows:
        Image.fromarray(np.full((8, 8), 7 * len(row[0]) % 255, np.uint8)).save(folder / row[0])
    path = root / "findings.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _grouped_rows(n_groups: int = 30, per_group: int = 3) -> list[list]:
    rng = np.random.default_rng(2)
    rows = []
    for g in range(n_groups):
        for i in range(per_group):
            a, b = rng.integers(0, 2, 2)
            rows.append([f"p{g}_{i}.png", int(a), int(b), int(g % 5 == 0), f"patient{g}"])
    return rows


def test_grouped_multi_label_split_and_folds_keep_patients_whole(tmp_path):
    path = _table(tmp_path, _grouped_rows(), ["image", "a", "b", "rare", "patient"])
    section = {"source": "table", "table": str(path), "image": "img/{image}", "labels": "all", "group": "patient"}
    ds = load_dataset(_data(section), tmp_path, 0, multilabel=True)
    assert ds.class_names == ["a", "b", "rare"] and _disjoint_groups(ds)
    assert (ds.splits["train"].labels.sum(axis=0) > 0).all()
    again = load_dataset(_data(section), tmp_path, 0, multilabel=True)  # seeded
    assert list(again.splits["test"].ids) == list(ds.splits["test"].ids)
    for index in range(3):
        fold = load_dataset(_data(section, fold={"k": 3, "index": index}), tmp_path, 0, multilabel=True)
        assert _disjoint_groups(fold) and set(fold.splits["test"].folds) == {index}


def test_a_label_column_that_is_not_0_1_is_refused_naming_row_and_column(tmp_path, monkeypatch, capsys):
    rows = _grouped_rows()
    rows[4][2] = "yes"
    path = _table(tmp_path, rows, ["image", "a", "b", "rare", "patient"])
    section = {"source": "table", "table": str(path), "image": "img/{image}", "labels": ["a", "b", "rare"], "group": "patient"}
    with pytest.raises(DataError) as info:
        load_dataset(_data(section), tmp_path, 0, multilabel=True)
    assert str(path) in str(info.value) and "row 5 (line 6), column 'b': 'yes' is not 0 or 1" in str(info.value)
    # from the command line: exit 2, one line
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": section}))
    code, _, err = _run_cli(monkeypatch, capsys, "data", str(recipe), "--data-root", str(tmp_path))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "'yes' is not 0 or 1" in err, err


def test_a_label_absent_from_train_after_the_split_is_refused(tmp_path):
    """'rare' is positive only on images the split column puts in test."""
    rows = _grouped_rows()
    for row in rows:
        row.append("test" if row[3] == 1 else "train")
    path = _table(tmp_path, rows, ["image", "a", "b", "rare", "patient", "split"])
    section = {"source": "table", "table": str(path), "image": "img/{image}", "labels": "all", "group": "patient",
               "split_column": "split"}
    with pytest.raises(DataError) as info:
        load_dataset(_data(section), tmp_path, 0, multilabel=True)
    assert "label 'rare' never occurs in the train split (after the split)" in str(info.value)
    assert isinstance(info.value, UsageError)


def test_medlite_data_on_the_chestmnist_recipe_offline_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    code, _, err = _run_cli(monkeypatch, capsys, "data", "chestmnist", "--data-root", str(tmp_path))
    assert code == 2 and "chestmnist.npz: not found in" in err and len(err.strip().splitlines()) == 1, err
