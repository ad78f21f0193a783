"""Label tables, grouped splits, group leakage and splits.csv, on the real shared tables where it matters."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from medlite.data import load_dataset, write_splits_csv
from medlite.data.registry import SOURCES, known_sources, register_source
from medlite.data.splits import grouped_split, kfold_assign
from medlite.data.table import read_table
from medlite.errors import DataError, UsageError
from medlite.recipe import DataConfig, validate_tree

# The two recipes of issue 16, as written (paths relative to the data root).
HAM = {"source": "table", "table": "folders/HAM10000_metadata.csv", "image": "HAM10000/{dx}/{image_id}.jpg",
       "label": "dx", "group": "lesion_id"}
NIH = {"source": "table", "table": "folders/NIH_ChestXray14_1000/labels.csv", "image": "images/{image}",
       "labels": "all", "group": "patient_id"}


def _data(section: dict, **more):
    return validate_tree({"data": {**section, **more}}, "test.yaml").data


def _split_groups(ds) -> dict[str, set]:
    return {name: set(split.groups) for name, split in ds.splits.items()}


def _disjoint(groups: dict[str, set]) -> bool:
    names = list(groups)
    return all(not (groups[a] & groups[b]) for i, a in enumerate(names) for b in names[i + 1:])


# -- the real tables ---------------------------------------------------------------------------


def test_ham10000_five_folds_are_lesion_disjoint(folders_root):
    """All 3610 images: every one of the 5 folds holds whole lesions, and each fold keeps every class."""
    _, rows = read_table(folders_root / "HAM10000_metadata.csv")
    classes = sorted({v["dx"] for _, _, v in rows})
    labels = np.array([classes.index(v["dx"]) for _, _, v in rows])
    lesions = np.array([v["lesion_id"] for _, _, v in rows])
    fold_of = kfold_assign(labels, 5, seed=0, groups=lesions)
    assert set(fold_of) == set(range(5))
    for lesion in np.unique(lesions):
        assert len(set(fold_of[lesions == lesion])) == 1, lesion
    for fold in range(5):  # stratified where the lesions allow: every class in every fold, sizes near 1/5
        assert set(labels[fold_of == fold]) == set(range(len(classes)))
        assert abs((fold_of == fold).mean() - 0.2) < 0.03
    # the same partition, but by image, shares lesions between folds: what the groups prevent
    by_image = kfold_assign(labels, 5, seed=0)
    assert any(len(set(by_image[lesions == lesion])) > 1 for lesion in np.unique(lesions))


def test_ham10000_table_recipe_loads_by_lesion_with_folds(shared_root, tmp_path):
    ds = load_dataset(_data(HAM, image_size=16, limit=40, fold={"k": 5, "index": 2}), shared_root, seed=0)
    assert ds.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert ds.group_column == "lesion_id" and "by lesion_id" in ds.split_origin
    assert _disjoint(_split_groups(ds))
    assert set(ds.splits["test"].folds) == {2} and 2 not in set(ds.splits["train"].folds)
    assert ds.splits["train"].images.shape[1:] == (16, 16, 3)
    assert ds.splits["train"].ids[0].startswith("HAM10000/") and ds.splits["train"].ids[0].endswith(".jpg")
    path = write_splits_csv(ds, tmp_path / "run" / "splits.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "split", "fold", "group"]
    assert len(rows) == sum(len(s) for s in ds.splits.values())
    test_rows = [r for r in rows if r["split"] == "test"]
    assert {r["fold"] for r in test_rows} == {"2"} and all(r["group"].startswith("HAM_") for r in rows)
    assert not list((tmp_path / "run").glob(".*"))  # atomic: no temporary file left


def test_nih_table_loads_by_patient_with_multi_hot_labels(shared_root):
    ds = load_dataset(_data(NIH, image_size=16), shared_root, seed=0, multilabel=True)
    assert ds.multilabel and ds.num_classes == 14 and ds.class_names[0] == "Atelectasis"
    every = np.concatenate([s.labels for s in ds.splits.values()])
    assert every.shape == (1000, 14) and set(np.unique(every)) == {0, 1}
    assert int((every.sum(axis=1) >= 1).sum()) == 501 and int((every.sum(axis=1) >= 2).sum()) == 213
    groups = _split_groups(ds)
    assert sum(len(g) for g in groups.values()) == 264 and _disjoint(groups)
    summary = ds.summary()
    assert summary["task"] == "multilabel" and summary["groups"]["train"] == len(groups["train"])
    assert sum(summary["per_class"][s]["Hernia"] for s in ("train", "val", "test")) == 9


def test_multi_label_table_loads_for_training(shared_root):
    """The NIH table is trainable (issue 17): multi-hot rows, 14 labels, the sigmoid in the file's spec."""
    ds = load_dataset(_data(NIH, limit=30), shared_root, seed=0)
    assert ds.multilabel and ds.num_classes == 14 and ds.splits["train"].labels.ndim == 2
    assert ds.preprocess.to_dict()["activation"] == "sigmoid"


def test_nih_separated_findings_column_equals_the_0_1_columns(shared_root):
    """NIH's 'Atelectasis|Effusion' column (metadata.csv) gives the same multi-hot rows as labels.csv."""
    columns = _data(NIH, limit=2000)
    separated = _data({"source": "table", "table": "folders/NIH_ChestXray14_1000/metadata.csv", "image": "images/{image}",
                       "label": "finding_labels_v2020", "label_separator": "|", "group": "patient_id"}, limit=2000)
    a = load_dataset(columns, shared_root, seed=0, multilabel=True)
    b = load_dataset(separated, shared_root, seed=0, multilabel=True)
    assert a.class_names == b.class_names
    rows_a = {i: tuple(y) for s in a.splits.values() for i, y in zip(s.ids, s.labels)}
    rows_b = {i: tuple(y) for s in b.splits.values() for i, y in zip(s.ids, s.labels)}
    assert rows_a == rows_b


# -- given splits whose groups cross ------------------------------------------------------------


def _nih_subset(folders_root, tmp_path, rows: int = 80) -> tuple:
    """The first rows of the NIH table with a split column that puts patient 1 in train and test."""
    columns, table = read_table(folders_root / "NIH_ChestXray14_1000" / "labels.csv")
    path = tmp_path / "nih_split.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + ["split"])
        for number, _, values in table[:rows]:
            split = "test" if number in (1, 2) or number % 4 == 0 else "train"  # rows 1-3 are patient 1
            writer.writerow([values[c] for c in columns] + [split])
    section = {"source": "table", "table": str(path), "root": str(folders_root / "NIH_ChestXray14_1000" / "images"),
               "image": "image", "labels": ["Effusion", "Infiltration"], "group": "patient_id", "split_column": "split",
               "image_size": 16}
    return path, section


def test_a_leaky_split_column_is_refused_then_accepted_with_a_warning(folders_root, tmp_path):
    path, section = _nih_subset(folders_root, tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(_data(section), tmp_path, seed=0, multilabel=True)
    message = str(info.value)
    assert str(path) in message and "groups (patient_id) are in more than one split" in message
    assert "e.g. '1' in train and test" in message and "allow_group_leakage" in message and "\n" not in message
    count = int(message.split(": ")[1].split()[0])
    assert count >= 1
    ds = load_dataset(_data(section, allow_group_leakage=True), tmp_path, seed=0, multilabel=True)
    assert ds.split_origin == "table column 'split'" and len(ds.warnings) == 1
    assert f"{count} groups (patient_id)" in ds.warnings[0] and ds.summary()["warnings"] == ds.warnings


# -- bad tables: one line naming the file, the row and the column -------------------------------


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(folder / name)


def _table(tmp_path, header, rows, name="t.csv", delimiter=","):
    path = tmp_path / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


GOOD = [[f"{i}.png", "ab"[i % 2], f"p{i // 2}"] for i in range(24)]


@pytest.mark.parametrize(
    "change, more, fragment",
    [
        (lambda rows: rows, {"group": "patient"}, "row 0 (header), column 'patient' (data.group): no such column"),
        (lambda rows: rows, {"image": "{file}.png"}, "column 'file' (data.image): no such column"),
        (lambda rows: rows[:5] + [["missing.png", "a", "p9"]] + rows[6:], {}, "row 6 (line 7), column 'image': image"),
        (lambda rows: rows[:3] + [["3.png", "c", "p1"]] + rows[4:], {"classes": ["a", "b"]}, "row 4 (line 5), column 'label': 'c' is not a class (a, b)"),
        (lambda rows: rows[:7] + [["7.png", "b", ""]] + rows[8:], {}, "row 8 (line 9), column 'group': empty group"),
        (lambda rows: rows[:2] + [["2.png", "", "p1"]] + rows[3:], {}, "row 3 (line 4), column 'label': empty label"),
        (lambda rows: rows[:9] + [["0.png", "b", "p4"]] + rows[10:], {}, "row 10 (line 11), column 'image': image '0.png' is already in row 1"),
    ],
)
def test_bad_tables_name_file_row_and_column(tmp_path, change, more, fragment):
    _images(tmp_path, [f"{i}.png" for i in range(24)])
    path = _table(tmp_path, ["image", "label", "group"], change([list(r) for r in GOOD]))
    with pytest.raises(DataError) as info:
        load_dataset(_data({"source": "table", "table": str(path), "label": "label", "group": "group", **more}), tmp_path, 0)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message, message
    assert isinstance(info.value, UsageError)


def test_bad_multi_label_values_and_split_names(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(6)])
    path = _table(tmp_path, ["image", "x", "y", "split"], [[f"{i}.png", "1", "2" if i == 4 else "0", "tran" if i == 5 else "train"] for i in range(6)],
                  name="t.tsv", delimiter="\t")
    with pytest.raises(DataError, match=r"t\.tsv: row 5 \(line 6\), column 'y': '2' is not 0 or 1"):
        load_dataset(_data({"source": "table", "table": str(path), "labels": ["x", "y"]}), tmp_path, 0, multilabel=True)
    with pytest.raises(DataError, match=r"row 6 \(line 7\), column 'split': 'tran' is not a split"):
        load_dataset(_data({"source": "table", "table": str(path), "label": "x", "split_column": "split"}), tmp_path, 0)


def test_table_recipe_keys_are_checked_before_loading():
    with pytest.raises(UsageError, match="give exactly one of label"):
        _data({"source": "table", "table": "t.csv", "label": "dx", "labels": "all"})
    with pytest.raises(UsageError, match=r"data\.table: Field required"):
        _data({"source": "table", "label": "dx"})
    with pytest.raises(UsageError, match=r"unknown key 'data\.flag' for this data source \(a key of source medmnist\)"):
        _data({"source": "table", "table": "t.csv", "label": "dx", "flag": "dermamnist"})


# -- grouped splits of small synthetic sets ---------------------------------------------------


def test_grouped_split_keeps_groups_whole_and_near_the_ratios():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(300), rng.integers(1, 5, 300))
    labels = (groups % 3 == 0).astype(np.int64)  # one class per group
    parts = grouped_split(labels, groups, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(len(labels)))
    sets = {name: set(groups[idx]) for name, idx in parts.items()}
    assert _disjoint(sets)
    for name, ratio in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(len(parts[name]) / len(labels) - ratio) < 0.04
        assert abs(labels[parts[name]].mean() - labels.mean()) < 0.08  # stratified


def test_folder_with_a_group_table(tmp_path):
    root = tmp_path / "images"
    for cls in ("a", "b"):
        _images(root / cls, [f"{cls}{i}.png" for i in range(20)])
    # HAM style: names without suffix; two images per patient
    groups = _table(tmp_path, ["image_id", "patient"], [[f"{c}{i}", f"{c}-p{i // 2}"] for c in "ab" for i in range(20)], "g.csv")
    cfg = DataConfig(source="folder", root=str(root), groups={"table": str(groups), "image": "image_id", "group": "patient"})
    ds = load_dataset(cfg, tmp_path, seed=0)
    assert _disjoint(_split_groups(ds)) and ds.group_column == "patient"
    assert ds.splits["train"].ids[0] in {f"{c}/{c}{i}.png" for c in "ab" for i in range(20)}
    missing = _table(tmp_path, ["image", "group"], [[f"a{i}.png", "g"] for i in range(20)], "partial.csv")
    with pytest.raises(DataError, match=r"partial\.csv: 20 of the 40 images .* have no row \(column 'image'\), e.g. 'b/b0.png'"):
        load_dataset(DataConfig(source="folder", root=str(root), groups=str(missing)), tmp_path, seed=0)


def test_presplit_folder_with_crossing_groups_is_refused(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _images(root / split / cls, [f"{split}{cls}{i}.png" for i in range(4)])
    groups = _table(tmp_path, ["image", "group"], [[f"{s}{c}{i}.png", f"g{c}{i}"] for s in ("train", "test") for c in "ab" for i in range(4)])
    with pytest.raises(DataError, match=r"8 groups \(group\) are in more than one split \(e.g. 'ga0' in train and test\)"):
        load_dataset(DataConfig(source="folder", root=str(root), groups=str(groups)), tmp_path, seed=0)


# -- the registry -------------------------------------------------------------------------------


def test_ids_of_medmnist_and_write_splits_without_groups(data_root, tmp_path):
    ds = load_dataset(DataConfig(flag="breastmnist", limit=10), data_root, seed=0)
    assert ds.splits["train"].groups is None and ds.splits["val"].ids[0].startswith("val_images[")
    rows = list(csv.reader(open(write_splits_csv(ds, tmp_path / "splits.csv"))))
    assert rows[0] == ["image", "split", "fold", "group"] and rows[1][2:] == ["", ""]


def test_a_new_source_registers_in_its_own_module_only(tmp_path):
    from typing import Literal

    from medlite.data.config import DataConfig as Base
    from medlite.data.dataset import Part, Source

    class NoiseData(Base):
        """Random images (a source defined outside medlite.data)."""

        source: Literal["noise"] = "noise"
        count: int = 40

    def load(cfg, data_root):
        rng = np.random.default_rng(0)
        labels = np.arange(cfg.count) % 2
        ids = np.array([f"noise[{i}]" for i in range(cfg.count)], dtype=object)
        return Source("noise", "noise", ["a", "b"], {"train": Part(labels, ids, images=rng.integers(0, 256, (cfg.count, 8, 8, 1), dtype=np.uint8))}, 1, 8)

    with pytest.raises(UsageError, match=r"data\.source: unknown data source 'noise'; known: arrays, cifar10, cifar100, folder, medmnist, table"):
        _data({"source": "noise"})
    register_source("noise", NoiseData, load)
    try:
        assert "noise" in known_sources()
        cfg = _data({"source": "noise", "count": 30})
        assert isinstance(cfg, NoiseData) and DataConfig(source="noise", count=30) == cfg
        assert sum(len(s) for s in load_dataset(cfg, tmp_path, seed=0).splits.values()) == 30
        with pytest.raises(UsageError, match=r"unknown key 'data\.root' for this data source"):
            _data({"source": "noise", "root": "x"})
    finally:
        del SOURCES["noise"]


# -- from the command line: exit 2, one line ----------------------------------------------------


@pytest.mark.parametrize("case", ["multi-label sampler", "bad table"])
def test_medlite_run_refuses_with_exit_2_and_one_line(shared_root, tmp_path, monkeypatch, capsys, case):
    import sys

    import yaml

    from medlite import cli

    if case == "multi-label sampler":  # a balanced sampler draws one class per image: not for multi-label data
        section, fragments = {**NIH, "limit": 40, "balance": "sampler"}, ["data.balance", "sampler", "multi-label"]
    else:
        _images(tmp_path, [f"{i}.png" for i in range(24)])
        rows = [list(r) for r in GOOD]
        rows[4][1] = "c"
        path = _table(tmp_path, ["image", "label", "group"], rows)
        section = {"source": "table", "table": str(path), "label": "label", "classes": ["a", "b"], "group": "group"}
        fragments = [str(path), "row 5 (line 6), column 'label': 'c' is not a class (a, b)"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": section}))
    monkeypatch.setattr(sys, "argv", ["medlite", "run", str(recipe), "--data-root", str(shared_root), "--out", str(tmp_path / "run")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    _, err = capsys.readouterr()
    assert info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
