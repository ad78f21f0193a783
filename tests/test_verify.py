"""Duplicates across splits, what a model has seen, and `medlite data --verify` (issue 16, items 3 and 4)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import imagehash
import numpy as np
import pytest
from PIL import Image

from medlite.data import load_dataset
from medlite.data.duplicates import (
    find_duplicates,
    image_hashes,
    known_split_warnings,
    load_hashes,
    save_hashes,
    seen_in_training,
    training_hashes,
)
from medlite.data.verify import verify_data
from medlite.recipe import DataConfig, validate_tree


def medlite(*args):
    return subprocess.run([sys.executable, "-m", "medlite.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def _data(section: dict):
    return validate_tree({"data": section}, "test.yaml").data


def _smooth(rng, n: int) -> np.ndarray:
    """Distinct images with structure at pHash's scale (blurred noise), values 0..250 so +2 never clips."""
    coarse = rng.integers(0, 251, (n, 7, 7), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((28, 28), Image.Resampling.BILINEAR)) for c in coarse])


def _arrays(tmp_path, planted: bool = True):
    """An arrays dataset; with `planted`, train holds 3 exact copies of test images, a +2 brighter copy of a
    fourth, and one image twice."""
    rng = np.random.default_rng(0)
    x = {"train": _smooth(rng, 30), "val": _smooth(rng, 8), "test": _smooth(rng, 10)}
    y = {name: np.arange(len(a)) % 2 for name, a in x.items()}
    if planted:
        bright = np.clip(x["test"][7].astype(int) + 2, 0, 255).astype(np.uint8)
        x["train"] = np.concatenate([x["train"], x["test"][[2, 4, 6]], bright[None], x["train"][[0]]])
        y["train"] = np.concatenate([y["train"], y["test"][[2, 4, 6]], y["test"][[7]], y["train"][[0]]])
    folder = tmp_path / "arrays"
    folder.mkdir()
    for name in x:
        np.save(folder / f"X_{name}.npy", x[name])
        np.save(folder / f"y_{name}.npy", y[name])
    return load_dataset(_data({"source": "arrays", "root": str(folder)}), tmp_path, seed=0), x


def test_image_hashes_are_imagehash_phash(tmp_path):
    images = _smooth(np.random.default_rng(1), 3)
    hashes = image_hashes(images)
    assert hashes.dtype == np.uint64 and hashes.shape == (3,)
    assert [int(h) for h in hashes] == [int(str(imagehash.phash(Image.fromarray(a))), 16) for a in images]
    path = save_hashes(tmp_path / "train_hashes.npy", hashes)
    assert path.stat().st_size == 128 + 3 * 8 and np.array_equal(load_hashes(path), hashes)


def test_planted_duplicates_are_found(tmp_path):
    ds, x = _arrays(tmp_path)
    report = find_duplicates(ds, max_distance=4)
    cross = [(p.kind, p.index_a, p.index_b) for p in report.pairs if p.split_a == "train" and p.split_b == "test"]
    assert ("exact", 30, 2) in cross and ("exact", 31, 4) in cross and ("exact", 32, 6) in cross
    near = [p for p in report.pairs if p.kind == "near" and (p.index_a, p.index_b) == (33, 7)]
    assert len(near) == 1 and near[0].distance <= 4 and near[0].id_b == "X_test.npy[7]" and near[0].same_label
    counts = report.counts["train/test"]
    assert (counts.exact, counts.near, counts.images_b_with_copy) == (3, 1, 4)
    assert report.counts["train/val"].exact + report.counts["train/val"].near == 0
    assert report.within_copies["train"] == 1 and report.within[0].indices == (0, 34)

    seen = seen_in_training(training_hashes(ds), x["test"], max_distance=4)
    assert seen == [2, 4, 6, 7]
    assert seen_in_training(training_hashes(ds), x["test"], max_distance=4) == seen  # deterministic
    (tmp_path / "clean").mkdir()
    clean, _ = _arrays(tmp_path / "clean", planted=False)
    assert find_duplicates(clean).cross_split == 0


def test_verify_warns_about_planted_duplicates_without_failing(tmp_path):
    ds, _ = _arrays(tmp_path)
    report = verify_data(_data({"source": "arrays", "root": str(tmp_path / "arrays")}), tmp_path, seed=0)
    assert report.ok and report.exit_code == 0
    messages = [f.message for f in report.warnings if f.check == "duplicates"]
    assert any(m.startswith("test: 4 images have a copy in train (3 exact, 1 near") for m in messages)
    assert any("train: 1 images are exact copies" in m for m in messages)


def test_verify_json_on_breastmnist_matches_the_npz(data_root, breast_npz):
    result = medlite("data", "breastmnist", "--verify", "--json", "--data-root", str(data_root))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["faults"] == [] and report["md5"]["ok"]
    classes = report["summary"]["classes"]
    for split in ("train", "val", "test"):
        labels = breast_npz[f"{split}_labels"].reshape(-1)
        assert report["counts"][split] == {name: int((labels == i).sum()) for i, name in enumerate(classes)}
        assert report["shapes"][split]["images"] == [len(labels), 28, 28, 1]
        images = breast_npz[f"{split}_images"]
        assert (report["values"][split]["min"], report["values"][split]["max"]) == (int(images.min()), int(images.max()))
    assert set(report["duplicates"]["counts"]) == {"train/val", "train/test", "val/test"}


def _images(folder, names, bad=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        if name in bad:
            (folder / name).write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / name)


def _table(tmp_path, rows, bad=()):
    (tmp_path / "img").mkdir(exist_ok=True)
    _images(tmp_path, [r[0] for r in rows], bad)
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "group", "split"])
        writer.writerows(rows)
    return path


def _rows():
    """12 images, two per patient, patients within one split; classes a/b in every split."""
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 4
    return [[f"img/{i}.png", "ab"[i % 2], f"p{i // 2}", splits[i]] for i in range(12)]


def test_a_leaky_table_exits_2_naming_the_group(tmp_path):
    rows = _rows()
    rows[11][2] = "p0"  # patient p0: train images 0 and 1, and test image 11
    path = _table(tmp_path, rows)
    recipe = tmp_path / "leaky.yaml"
    recipe.write_text(f"data: {{source: table, table: {path}, label: label, group: group, split_column: split}}\n")
    result = medlite("data", str(recipe), "--verify", "--json")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("medlite: error: data --verify: 1 faults; first [groups]") and result.stderr.count("\n") == 1
    faults = json.loads(result.stdout)["faults"]
    assert [f["check"] for f in faults] == ["groups"]
    assert str(path) in faults[0]["message"] and "1 groups (group)" in faults[0]["message"]
    assert "'p0' in train and test" in faults[0]["message"]
    people = medlite("data", str(recipe), "--verify")
    assert people.returncode == 2 and "FAULT [groups]" in people.stdout and "'p0' in train and test" in people.stdout
    accepted = medlite("data", str(recipe), "--verify", "--json", "--set", "data.allow_group_leakage=true")
    assert accepted.returncode == 0, accepted.stderr
    report = json.loads(accepted.stdout)
    assert [w["check"] for w in report["warnings"]] == ["groups"] and report["groups"]["crossing"] == 1


def test_unreadable_files_are_a_fault_without_skip_bad_and_a_warning_with_it(tmp_path):
    path = _table(tmp_path, _rows(), bad={"img/3.png"})
    section = {"source": "table", "table": str(path), "label": "label", "group": "group", "split_column": "split"}
    report = verify_data(_data(section), tmp_path, seed=0)
    assert [f.check for f in report.faults] == ["unreadable"] and report.exit_code == 2
    assert "1 unreadable images" in report.faults[0].message and "3.png" in report.faults[0].message
    skipped = verify_data(_data({**section, "skip_bad": True}), tmp_path, seed=0)
    assert skipped.ok and [f.check for f in skipped.warnings] == ["unreadable"]
    assert skipped.counts["train"] == {"a": 3, "b": 2}


def test_a_class_without_training_images_is_a_fault(tmp_path):
    rows = _rows()
    rows[10][1] = rows[11][1] = "c"  # class c only in test
    section = {"source": "table", "table": str(_table(tmp_path, rows)), "label": "label", "split_column": "split"}
    report = verify_data(_data(section), tmp_path, seed=0)
    assert [f.check for f in report.faults] == ["classes"] and "'c'" in report.faults[0].message
    assert any(f.check == "classes" and f.message.startswith("val: no image of class 'c'") for f in report.warnings)


def test_dermamnist_official_split_warns_about_shared_lesions(tmp_path, monkeypatch):
    warnings = known_split_warnings(DataConfig(source="medmnist", flag="dermamnist"))
    assert len(warnings) == 1
    assert "641 lesions" in warnings[0] and "Abhishek" in warnings[0]
    assert "lesion_id" in warnings[0] and "medlite run ham10000" in warnings[0]
    assert known_split_warnings(DataConfig(source="medmnist", flag="breastmnist")) == []
    assert known_split_warnings(DataConfig(source="arrays", root="x")) == []
    # Without the file too: the warning stands beside the fault that the file is missing.
    monkeypatch.setenv("MEDLITE_OFFLINE", "1")
    report = verify_data(DataConfig(source="medmnist", flag="dermamnist", size=64), tmp_path, seed=0)
    assert [f.check for f in report.warnings] == ["known_split"] and [f.check for f in report.faults] == ["load"]


def test_a_medmnist_file_that_is_not_the_official_one_is_a_fault(data_root, tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes((data_root / "breastmnist.npz").read_bytes() + b"\0")
    report = verify_data(DataConfig(source="medmnist", flag="breastmnist"), tmp_path, seed=0)
    assert [f.check for f in report.faults] == ["md5"] and report.md5["ok"] is False
    assert str(tmp_path / "breastmnist.npz") in report.faults[0].message and report.md5["expected"] in report.faults[0].message
