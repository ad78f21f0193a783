"""Operating point: threshold rules against hand-worked examples, the metadata round trip, the edge
runner's decision, and resume-safety (writing the threshold changes no stage key)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medlite.errors import UsageError
from medlite.evaluate.operating_point import (
    bootstrap_sens_spec,
    choose_threshold,
    decide,
    operating_point,
    positive_index,
    sens_spec,
)
from medlite.evaluate.predictions import predictions_csv, read_predictions
from medlite.recipe import EvaluateConfig, OperatingPoint, load_recipe

SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
TRUTH = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], bool)  # 5 positives: 0.95 0.9 0.7 0.5 0.2


def test_sensitivity_rule_keeps_the_target_with_the_highest_threshold():
    # 0.8 of 5 positives = 4 -> the 4th highest positive score, 0.5
    threshold, rule = choose_threshold(SCORES, TRUTH, OperatingPoint(sensitivity=0.8))
    assert threshold == 0.5 and "sensitivity" in rule
    assert sens_spec(SCORES >= threshold, TRUTH) == (0.8, 0.6)  # negatives below 0.5: 0.4 0.3 0.1
    # 0.9 -> ceil(4.5) = 5 positives -> 0.2
    assert choose_threshold(SCORES, TRUTH, OperatingPoint(sensitivity=0.9))[0] == 0.2


def test_specificity_and_youden_rules():
    # specificity 0.6 of 5 negatives = 3 below the threshold -> just above 0.4
    t, _ = choose_threshold(SCORES, TRUTH, OperatingPoint(specificity=0.6))
    assert 0.4 < t < 0.4 + 1e-12
    assert sens_spec(SCORES >= t, TRUTH)[1] == 0.6
    # Youden by brute force over every candidate threshold
    t, _ = choose_threshold(SCORES, TRUTH, OperatingPoint(youden=True))
    best = max(SCORES, key=lambda c: sum(sens_spec(SCORES >= c, TRUTH)) - 1)
    assert sum(sens_spec(SCORES >= t, TRUTH)) == pytest.approx(sum(sens_spec(SCORES >= best, TRUTH)))


def test_decide_and_bootstrap():
    probs = np.array([[0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    assert decide(probs, 0, 0.25).tolist() == [0, 0, 1]
    three = np.array([[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
    assert decide(three, 1, 0.4).tolist() == [1, 2]
    ci = bootstrap_sens_spec(SCORES >= 0.5, TRUTH, 300, 0.95, seed=0)
    assert ci["sensitivity"][0] <= 0.8 <= ci["sensitivity"][1] and ci["specificity"][0] <= 0.6 <= ci["specificity"][1]
    assert ci == bootstrap_sens_spec(SCORES >= 0.5, TRUTH, 300, 0.95, seed=0)  # seeded


def test_operating_point_reports_test_beside_argmax():
    rng = np.random.default_rng(0)
    val_labels = rng.integers(0, 2, 200)
    val_p1 = np.clip(0.3 + 0.4 * val_labels + rng.normal(0, 0.2, 200), 0, 1)
    test_labels = rng.integers(0, 2, 300)
    test_p1 = np.clip(0.3 + 0.4 * test_labels + rng.normal(0, 0.2, 300), 0, 1)
    as_probs = lambda p: np.stack([1 - p, p], 1)  # noqa: E731
    cfg = EvaluateConfig(bootstrap=200, operating_point={"positive_class": "b", "sensitivity": 0.95})
    op = operating_point(as_probs(val_p1), val_labels, as_probs(test_p1), test_labels, ["a", "b"], cfg.operating_point, cfg, 0)
    assert op["val"]["sensitivity"] >= 0.95
    expected_sens = ((test_p1 >= op["threshold"]) & (test_labels == 1)).sum() / (test_labels == 1).sum()
    assert op["test"]["sensitivity"] == pytest.approx(expected_sens, abs=1e-4)
    assert op["argmax"]["sensitivity"] == pytest.approx(((test_p1 > 0.5) & (test_labels == 1)).sum() / (test_labels == 1).sum(), abs=1e-4)
    lo, hi = op["test"]["ci"]["sensitivity"]
    assert lo <= op["test"]["sensitivity"] <= hi
    assert op["test"]["sensitivity"] > op["argmax"]["sensitivity"]  # a lower threshold finds more positives


def test_recipe_keys_and_errors():
    assert load_recipe("breastmnist", ["evaluate.operating_point=youden"]).evaluate.operating_point.youden
    with pytest.raises(UsageError, match="exactly one"):
        load_recipe("breastmnist", ["evaluate.operating_point={sensitivity: 0.9, youden: true}"])
    with pytest.raises(UsageError, match="operating_point.sensitivity"):
        load_recipe("breastmnist", ["evaluate.operating_point.sensitivity=1.5"])
    with pytest.raises(UsageError, match="positive_class: 'malignent' is not a class"):
        positive_index(OperatingPoint(positive_class="malignent", sensitivity=0.9), ["malignant", "normal, benign"])
    with pytest.raises(UsageError, match="required with 3 classes"):
        positive_index(OperatingPoint(youden=True), ["a", "b", "c"])


def test_predictions_csv_round_trip():
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    decided = decide(probs, 1, 0.1)
    text = predictions_csv(probs, np.array([0, 1]), ["normal, benign", "malignant"], decided)
    assert text.splitlines()[0] == 'image_id,true_label,predicted_label,"prob_normal, benign",prob_malignant,operating_point_label'
    assert text.splitlines()[1].endswith(",malignant")  # 0.2 >= 0.1
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.csv"
        path.write_text(text)
        ids, labels, got, classes = read_predictions(path)
    assert ids.tolist() == [0, 1]
    assert classes == ["normal, benign", "malignant"] and labels.tolist() == [0, 1]
    np.testing.assert_allclose(got, probs)


@pytest.fixture()
def exported(tmp_path):
    from medlite.data.preprocess import PreprocessSpec
    from medlite.export.onnx import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    spec = PreprocessSpec(16, 1, 0.5, 0.5, ("benign", "malignant"))
    path = tmp_path / "m.onnx"
    export_onnx(model, spec, path)
    return path, spec


def test_threshold_in_metadata_is_invisible_to_stage_keys(exported):
    from medlite.export.onnx import OPERATING_POINT_KEY, content_hash, read_metadata, write_metadata

    path, _ = exported
    before_raw = hashlib.sha256(path.read_bytes()).hexdigest()
    assert content_hash(path) == before_raw
    assert write_metadata(path, {OPERATING_POINT_KEY: json.dumps({"positive_index": 1, "threshold": 0.3})})
    assert hashlib.sha256(path.read_bytes()).hexdigest() != before_raw
    assert content_hash(path) == before_raw  # what stage keys see: unchanged
    assert not write_metadata(path, {OPERATING_POINT_KEY: json.dumps({"positive_index": 1, "threshold": 0.3})})
    assert "medlite.preprocess" in read_metadata(path)
    assert write_metadata(path, {OPERATING_POINT_KEY: None})
    assert OPERATING_POINT_KEY not in read_metadata(path) and content_hash(path) == before_raw


def test_edge_runner_applies_the_stored_threshold(exported, tmp_path):
    from medlite import edge
    from medlite.data.preprocess import prepare_files
    from medlite.export.onnx import OPERATING_POINT_KEY, run_onnx, write_metadata

    path, spec = exported
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    files = sorted(folder.glob("*.png"))
    p1 = edge.softmax(run_onnx(path, prepare_files(files, spec)))[:, 1]
    threshold = float(np.median(p1))
    meta = {"positive_class": "malignant", "positive_index": 1, "threshold": threshold, "rule": "test"}
    write_metadata(path, {OPERATING_POINT_KEY: json.dumps(meta)})
    report = edge.classify(path, folder)
    assert report["operating_point"]["threshold"] == threshold
    by_path = {r["path"]: r for r in report["images"]}
    for f, p in zip(files, p1):
        r = by_path[str(f)]
        assert r["class"] == ("malignant" if p >= threshold else "benign")
        assert r["argmax_class"] == ("malignant" if p > 0.5 else "benign")
    assert edge.classify(path, folder, use_threshold=False)["operating_point"] is None
    write_metadata(path, {OPERATING_POINT_KEY: json.dumps({**meta, "positive_class": "benign"})})
    with pytest.raises(edge.EdgeError, match="does not match"):
        edge.classify(path, folder)
