"""Multi-label classification end to end (issue 17) on the real NIH table: training, per-label KD,
int8, per-label metrics measured on the files, per-label thresholds in the files, predict / serve /
edge per label, the model card, the report's per-label figures; and the pieces it is made of."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medlite.errors import UsageError
from medlite.recipe import Recipe
from medlite.task import MULTI_LABEL_TASK, SINGLE_LABEL_TASK

NIH = {"source": "table", "table": "folders/NIH_ChestXray14_1000/labels.csv", "image": "images/{image}",
       "labels": "all", "group": "patient_id", "image_size": 32, "limit": 150,
       "split": {"train": 0.6, "val": 0.2, "test": 0.2}}
BASE = {
    "name": "nih_tiny",
    "data": NIH,
    "teacher": {"arch": "medlite_cnn_tiny", "epochs": 1},
    "student": {"arch": "medlite_dsconv_tiny", "epochs": 1},
    "evaluate": {"bootstrap": 50},
    "compress": {"targets": ["student_kd"], "methods": ["int8_static"]},
    "bench": {"enabled": False},
}


def _run(out, root, **sections):
    from medlite.pipeline import run_pipeline

    tree = json.loads(json.dumps(BASE))
    tree.update(sections)
    tree = {k: v for k, v in tree.items() if v is not None}  # None: leave the section out
    lines: list[str] = []
    results = run_pipeline(Recipe.model_validate(tree), out, root, say=lines.append, progress=False)
    return results, {v["name"]: v for v in results["variants"]}, lines


@pytest.fixture(scope="module")
def nih_run(shared_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("nih") / "run"
    results, variants, _ = _run(out, shared_root, explain={"methods": ["occlusion"], "images_per_class": 1,
                                                            "label": "Effusion"})
    return out, results, variants


def test_nih_end_to_end_per_label_aucs_are_those_of_the_int8_file(nih_run, shared_root):
    from medlite.data import load_dataset
    from medlite.evaluate import predict_artifact
    from medlite.evaluate.multilabel import per_label_auc
    from medlite.runtime import open_artifact

    out, results, variants = nih_run
    assert {"teacher", "student_scratch", "student_kd", "student_kd_int8_static"} <= set(variants)
    int8 = variants["student_kd_int8_static"]
    assert int8["format"] == "onnx-int8-qdq"
    names = results["dataset"]["classes"]
    assert len(names) == 14
    m = int8["metrics"]
    assert set(m["per_label"]) == set(names)
    # The figures are the deployed int8 file's, recomputed here from it on the test split.
    ds = load_dataset(Recipe.model_validate(BASE).data, shared_root, seed=0)
    test = ds.splits["test"]
    probs = predict_artifact(out / int8["file"], test.images, ds.preprocess, 256, int8["runtime"])
    assert ((probs > 0) & (probs < 1)).all() and not np.allclose(probs.sum(1), 1)  # sigmoids, not a softmax
    aucs = per_label_auc(probs, test.labels)
    for k, name in enumerate(names):
        stored = m["per_label"][name]["auc"]
        assert (np.isnan(stored) and np.isnan(aucs[k])) or stored == pytest.approx(aucs[k])
    assert m["auc"] == pytest.approx(np.nanmean(aucs))  # `auc` is the mean AUC: tables and studies rank by it
    assert m["undefined"] == [] or all(":" in line for line in m["undefined"])
    # Per-label thresholds chosen on validation travel in the file; the predictions file is multi-hot.
    art = open_artifact(out / int8["file"])
    assert art.spec.activation == "sigmoid"
    thresholds = art.operating_point["thresholds"]
    assert set(thresholds) == set(names) and all(0 < t < 1 for t in thresholds.values())
    assert thresholds == pytest.approx(m["operating_point"]["thresholds"])
    with open(out / m["predictions"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(test)
    assert {f"true_{n}" for n in names} | {f"prob_{n}" for n in names} | {f"decision_{n}" for n in names} <= set(rows[0])
    decided = np.array([[int(r[f"decision_{n}"]) for n in names] for r in rows])
    cut = np.array([thresholds[n] for n in names])
    assert (decided == (probs >= cut)).all()
    # Training chose the best epoch by the mean validation AUC.
    assert variants["teacher"]["train"]["selected_by"] in ("val_auc", "val_loss", "last_epoch")


def test_nih_predict_edge_and_card_give_every_label_at_its_threshold(nih_run, folders_root):
    from medlite.deploy.predict import predict_files, to_csv
    from medlite.edge import classify

    out, results, variants = nih_run
    names = results["dataset"]["classes"]
    model = out / variants["student_kd_int8_static"]["file"]
    images = sorted((folders_root / "NIH_ChestXray14_1000" / "images").glob("*.png"))[:3]
    result = predict_files(model, images)
    assert result["task"] == "multilabel" and "its threshold" in result["decision"]
    for row in result["predictions"]:
        assert set(row["labels"]) == set(names)
        assert row["positive_labels"] == [n for n in names if row["labels"][n]["probability"] >= row["labels"][n]["threshold"]]
    text = to_csv(result)
    assert "decision_Effusion" in text.splitlines()[0] and len(text.splitlines()) == 4
    edge = classify(model, images[0])
    one = edge["images"][0]
    assert set(one["labels"]) == set(names) and one["decision"] == "per-label thresholds stored in the model"
    assert one["labels"] == {n: result["predictions"][0]["labels"][n] | {"probability": one["labels"][n]["probability"],
                                                                          "threshold": one["labels"][n]["threshold"]}
                             for n in names}
    card = json.loads((out / (variants["student_kd_int8_static"]["file"] + ".json")).read_text())["medlite.card"]
    assert card["task"] == "multilabel" and [row["label"] for row in card["labels"]] == names
    assert all(0 < row["threshold"] < 1 for row in card["labels"])


def test_nih_serve_api_and_page_show_every_label(nih_run, folders_root):
    from fastapi.testclient import TestClient

    from medlite.deploy.predict import predict_files
    from medlite.deploy.serve import create_app

    out, results, variants = nih_run
    names = results["dataset"]["classes"]
    model = out / variants["student_kd_int8_static"]["file"]
    image = sorted((folders_root / "NIH_ChestXray14_1000" / "images").glob("*.png"))[0]
    client = TestClient(create_app(model))
    reply = client.post("/predict?heatmap=1", files={"file": (image.name, image.read_bytes(), "image/png")})
    assert reply.status_code == 200, reply.text
    row = reply.json()["results"][0]
    assert set(row["labels"]) == set(names) and row["heatmap_png"] and row["heatmap_label"] in names
    assert row["labels"] == predict_files(model, [image])["predictions"][0]["labels"]  # the same as predict's
    page = client.get("/").text
    assert "each label positive when its probability" in page and "Effusion" in page


def test_nih_report_has_per_label_roc_table_cooccurrence_and_label_explanations(nih_run):
    out, results, variants = nih_run
    for name in variants:
        assert (out / "figures" / f"variant_{name}.png").is_file()
    assert (out / "figures" / "label_cooccurrence.png").is_file()
    with open(out / "per_label_report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 14 * len(variants) and {"auc", "threshold", "sensitivity"} <= set(rows[0])
    html = (out / "report.html").read_text()
    assert "Per-label AUC" in html and "Hernia" in html
    explained = variants["student_kd_int8_static"]["explain"]
    names = results["dataset"]["classes"]
    assert explained["target_rule"] == "the label 'Effusion' (explain.label)"
    assert set(explained["targets"]) == {names.index("Effusion")}


@pytest.mark.parametrize("distill", [{"method": "at"}, {"method": "kd", "views": "live", "mixup": 0.4}],
                         ids=["at", "kd-function-matching-mixup"])
def test_feature_method_and_mixup_distil_multi_label_data(shared_root, tmp_path, distill):
    """A feature method (AT) on multi-label data: its label term is the task's BCE; function matching with
    mixup mixes the multi-hot targets (lam * y + (1 - lam) * y[partner]) for the student and its baseline."""
    _, variants, _ = _run(tmp_path / "run", shared_root, distill=distill, compress={"methods": []},
                          explain={"enabled": False})
    for name in ("student_kd", "student_scratch"):
        m = variants[name]["metrics"]
        assert len(m["per_label"]) == 14 and 0 <= m["auc"] <= 1
        assert np.isfinite(variants[name]["train"]["history"][0]["train_loss"])


# -- the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dkd", "dist"])
def test_softmax_only_methods_refuse_multi_label_naming_the_key(method):
    from medlite.distill.config import CONFIGS
    from medlite.distill.methods import build_method
    from medlite.models import create

    student = create("medlite_dsconv_tiny", 3, 1, 16)
    with pytest.raises(UsageError) as info:
        build_method(CONFIGS[method](method=method), student, [create("medlite_cnn_tiny", 3, 1, 16)],
                     torch.zeros(2, 1, 16, 16), task=MULTI_LABEL_TASK)
    assert f"distill.method: {method}" in str(info.value) and "multi-label" in str(info.value)
    assert "kd" in str(info.value)


def test_multi_label_teacher_targets_are_per_label_sigmoids_averaged():
    from medlite.distill import losses
    from medlite.distill.methods import KD, StudentOutput, TeacherOutput
    from medlite.distill.config import CONFIGS

    torch.manual_seed(0)
    a, b, s = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    teacher = TeacherOutput([a, b], [1.0, 3.0], task=MULTI_LABEL_TASK)
    expected = 0.25 * torch.sigmoid(a / 2) + 0.75 * torch.sigmoid(b / 2)
    assert torch.allclose(teacher.probs(2.0), expected)
    y = (torch.rand(4, 3) > 0.5).float()
    kd = KD(CONFIGS["kd"](method="kd", temperature=2.0, alpha=0.6))
    loss = kd.loss(StudentOutput(s), teacher, y, hard_loss=lambda z: losses.multilabel_bce(z, y), epoch=0)
    assert torch.allclose(loss, losses.multilabel_kd_loss(s, expected, losses.multilabel_bce(s, y), 2.0, 0.6))
    # single-label: unchanged (softmax KD)
    single = TeacherOutput([a], task=SINGLE_LABEL_TASK)
    assert torch.allclose(single.probs(2.0), torch.softmax(a / 2, 1))


def test_the_loss_key_is_checked_against_the_task():
    from medlite.train.fitting import hard_loss_kind

    assert hard_loss_kind(MULTI_LABEL_TASK, "asymmetric") == "asymmetric"
    assert hard_loss_kind(SINGLE_LABEL_TASK, None) is None
    with pytest.raises(UsageError, match="loss: 'cross_entropy' is not a loss for multi-label data"):
        hard_loss_kind(MULTI_LABEL_TASK, "cross_entropy")
    with pytest.raises(UsageError, match="loss: 'bce'"):
        hard_loss_kind(SINGLE_LABEL_TASK, "bce")


def test_multi_hot_predictions_file_round_trips(tmp_path):
    from medlite.evaluate.predictions import read_predictions, write_predictions

    probs = np.array([[0.1, 0.9], [0.6, 0.2]])
    labels = np.array([[0, 1], [1, 1]], np.uint8)
    path = write_predictions(tmp_path / "p.csv", probs, labels, ["a", "b"], (probs >= 0.5).astype(np.uint8))
    ids, got_labels, got_probs, names = read_predictions(path)
    assert names == ["a", "b"] and (got_labels == labels).all() and np.allclose(got_probs, probs)
    assert path.read_text().splitlines()[0] == "image_id,true_a,true_b,prob_a,prob_b,decision_a,decision_b"


@pytest.mark.parametrize("value, words", [
    ({"thresholds": {"a": 0.3}}, "miss ['b']"),
    ({"thresholds": {"a": 0.3, "b": 1.5}}, "threshold of 'b'"),
    ({"thresholds": {"a": 0.3, "b": 0.4, "c": 0.2}}, "name ['c']"),
])
def test_bad_per_label_operating_points_are_refused_naming_the_file(value, words):
    from medlite.runtime import ArtifactError, read_operating_point

    with pytest.raises(ArtifactError, match="model.onnx") as info:
        read_operating_point({"medlite.operating_point": json.dumps(value)}, None, ["a", "b"], "model.onnx")
    assert words in str(info.value)
    ok = read_operating_point({"medlite.operating_point": json.dumps({"thresholds": {"a": 0.3, "b": 0.6}})}, None,
                              ["a", "b"], "model.onnx")
    assert ok["thresholds"] == {"a": 0.3, "b": 0.6}


def test_single_label_spec_bytes_are_unchanged_and_sigmoid_is_read_back():
    from medlite.data.preprocess import PreprocessSpec
    from medlite.runtime import activate

    single = PreprocessSpec(28, 1, 0.5, 0.25, ("a", "b"))
    assert "activation" not in single.to_dict()  # a single-label file's metadata is as before
    multi = PreprocessSpec.from_dict({**single.to_dict(), "activation": "sigmoid"})
    assert multi.multilabel and multi.to_dict()["activation"] == "sigmoid"
    z = np.array([[0.0, 2.0]])
    assert np.allclose(activate(z, multi), 1 / (1 + np.exp(-z)))
    assert np.allclose(activate(z, single).sum(1), 1)
    with pytest.raises(ValueError, match="activation 'relu'"):
        PreprocessSpec.from_dict({**single.to_dict(), "activation": "relu"})


def test_paired_study_tests_compare_the_mean_auc_and_each_label():
    """The study's paired bootstrap on multi-hot labels: the observed difference is the mean AUC's (over the
    labels defined), `label=k` that label's; a label without positives has no test, never a number."""
    from medlite.evaluate.multilabel import mean_auc, per_label_auc
    from medlite.study.stats import paired_auc_difference

    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) > 0.6).astype(np.uint8)
    labels[:, 2] = 0  # undefined: no positive
    a = np.clip(labels * 0.4 + rng.random((60, 3)) * 0.6, 0, 1)
    b = rng.random((60, 3))
    pairs = [{"group": "t", "labels": labels, "a": a, "b": b}]
    mean = paired_auc_difference(pairs, resamples=200)
    assert mean["delta_auc"] == pytest.approx(mean_auc(a, labels) - mean_auc(b, labels))
    assert mean["delta_auc"] > 0 and mean["ci"][0] <= mean["delta_auc"] <= mean["ci"][1]
    first = paired_auc_difference(pairs, resamples=200, label=0)
    assert first["delta_auc"] == pytest.approx(per_label_auc(a, labels)[0] - per_label_auc(b, labels)[0])
    # the runner leaves an undefined label out of the per-label family (no bootstrap of a NaN statistic)
    from medlite.study.runner import _per_label
    from types import SimpleNamespace

    spec = SimpleNamespace(stats=SimpleNamespace(resamples=100, confidence=0.95, alpha=0.05))
    out = _per_label(pairs, ["x", "y", "z"], spec, seed=0)
    assert "p_holm" in out["x"] and np.isnan(out["z"]["delta_auc"]) and "p_holm" not in out["z"]
    assert "no positive" in out["z"]["undefined"]


def test_multi_label_ensemble_averages_per_label_sigmoids():
    from medlite.models import create
    from medlite.models.composite import Ensemble

    torch.manual_seed(0)
    members = [create("medlite_cnn_tiny", 3, 1, 16).eval(), create("medlite_dsconv_tiny", 3, 1, 16).eval()]
    ensemble = Ensemble(members, [1.0, 3.0]).eval()
    ensemble.multilabel = True
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = 0.25 * torch.sigmoid(members[0](x)) + 0.75 * torch.sigmoid(members[1](x))
        assert torch.allclose(torch.sigmoid(ensemble(x)), expected, atol=1e-6)
    assert "multilabel" not in ensemble.state_dict()  # checkpoints of either task have the same keys


def test_teacher_ensemble_distils_and_deploys_on_multi_label_data(shared_root, tmp_path):
    _, variants, _ = _run(tmp_path / "run", shared_root, teacher=None, compress={"methods": []}, explain={"enabled": False},
                          teachers=[{"arch": "medlite_cnn_tiny", "epochs": 1}, {"arch": "medlite_dsconv_tiny", "epochs": 1}])
    assert {"teacher_0", "teacher_1", "teacher_ensemble", "student_kd"} <= set(variants)
    for name in ("teacher_ensemble", "student_kd"):
        assert len(variants[name]["metrics"]["per_label"]) == 14


@pytest.mark.parametrize("sections, words", [
    ({"distill": {"method": "dkd"}}, "distill.method: dkd is defined for one softmax"),
    ({"student": {"arch": "medlite_dsconv_tiny", "epochs": 1, "loss": "cross_entropy"}},
     "student.loss: 'cross_entropy' is not a loss for multi-label data"),
    ({"teacher": {"arch": "medlite_cnn_tiny", "epochs": 1, "label_smoothing": 0.1}}, "teacher.label_smoothing"),
])
def test_settings_for_one_class_per_image_are_refused_before_any_training(shared_root, tmp_path, sections, words):
    with pytest.raises(UsageError, match=words.replace(".", r"\.").replace("(", r"\(")) as info:
        _run(tmp_path / "run", shared_root, **sections)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))  # refused before the teacher trained


def test_an_unset_loss_is_left_out_of_every_dump():
    """Stage keys, run markers and study trial records of recipes without `loss` stay as they were."""
    from medlite.recipe import TrainConfig

    recipe = Recipe.model_validate({"name": "x"})
    assert "loss" not in recipe.model_dump(mode="json")["student"] and "loss" not in recipe.teacher.model_dump()
    assert TrainConfig(arch="a", loss="asymmetric").model_dump()["loss"] == "asymmetric"
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe


def test_evaluate_a_multi_label_file_gives_the_run_s_own_per_label_figures(nih_run, shared_root, tmp_path):
    """`medlite evaluate` on the file's own test split (same table, seed and limit) recomputes the
    run's stored mean and per-label AUCs; labels are matched by column, extra columns are left out."""
    import yaml

    from medlite.evaluate.external import evaluate_external, summary_lines

    out, results, variants = nih_run
    int8 = variants["student_kd_int8_static"]
    data_file = tmp_path / "nih.yaml"
    data_file.write_text(yaml.safe_dump({"data": NIH}))
    doc = evaluate_external(out / int8["file"], str(data_file), shared_root, split="test", out=tmp_path / "ev",
                            bootstrap=20)
    m = doc["metrics"]["multilabel"]
    assert doc["task"] == "multilabel" and doc["data"]["n_images"] == int8["metrics"]["n"]
    assert m["auc"] == pytest.approx(int8["metrics"]["auc"])
    for name, row in int8["metrics"]["per_label"].items():
        got = m["per_label"][name]["auc"]
        assert (got is None and row["auc"] != row["auc"]) or got == pytest.approx(row["auc"])
        assert m["per_label"][name]["threshold"] == pytest.approx(int8["metrics"]["operating_point"]["thresholds"][name])
    with open(tmp_path / "ev" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == doc["data"]["n_images"] and "decision_Effusion" in rows[0]
    assert any("Effusion: AUC" in line for line in summary_lines(doc))
    assert "Per label" in (tmp_path / "ev" / "evaluation.html").read_text()


def test_evaluate_refuses_a_multi_label_file_on_single_label_data(nih_run, data_root, tmp_path):
    from medlite.evaluate.external import evaluate_external

    out, _, variants = nih_run
    with pytest.raises(UsageError, match="multi-label model .* single-label data"):
        evaluate_external(out / variants["student_kd"]["file"], "breastmnist", data_root, out=tmp_path / "ev")


def test_label_columns_match_by_name_or_map_and_name_what_is_missing():
    from medlite.evaluate.external_multilabel import label_columns

    assert label_columns(["b", "a", "x"], ["a", "b"], {}, "d") == ([1, 0], ["x"])
    assert label_columns(["B", "a"], ["a", "b"], {"B": "b"}, "d") == ([1, 0], [])
    with pytest.raises(UsageError, match="no label column for the model's label 'b'"):
        label_columns(["a"], ["a", "b"], {}, "d")
    with pytest.raises(UsageError, match="'z' not a label of d"):
        label_columns(["a", "b"], ["a", "b"], {"z": "a"}, "d")


def test_a_multi_label_litert_file_gives_per_label_sigmoids_and_decisions(tmp_path):
    """The .tflite of a multi-label model: outputs read through the sigmoid its spec names, equal
    to PyTorch's, decisions per label at the thresholds the sidecar carries."""
    from medlite.export.litert import missing_packages

    if missing_packages():
        pytest.skip("LiteRT converter not installed (make litert)")
    from medlite.data.preprocess import PreprocessSpec, normalize
    from medlite.export.litert import convert_fp32
    from medlite.models import create
    from medlite.runtime import open_artifact

    torch.manual_seed(0)
    names = ("Effusion", "Mass", "Nodule")
    spec = PreprocessSpec(16, 1, 0.5, 0.25, names, activation="sigmoid")
    model = create("medlite_cnn_tiny", num_classes=3, in_chans=1, img_size=16).eval()
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    with torch.no_grad():
        want = torch.sigmoid(model(torch.from_numpy(normalize(images, spec)))).numpy()
    path = tmp_path / "m.tflite"
    convert_fp32(model, spec, path, "m")
    art = open_artifact(path)
    got = art.predict_proba(images)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got.sum(1), 1)
    decided = art.decide(got)
    assert decided.shape == (8, 3) and ((decided == 1) == (got >= 0.5)).all()


def test_study_markdown_lists_each_label_s_paired_test():
    from medlite.study.outputs import _per_label_markdown

    doc = {"comparisons": [{"setting": "default", "variant": "student_kd", "baseline_setting": "default",
                            "baseline_variant": "student_scratch",
                            "per_label": {"Effusion": {"delta_auc": 0.0412, "ci": [0.01, 0.07], "p": 0.004,
                                                       "p_holm": 0.008, "significant": True},
                                          "Hernia": {"delta_auc": float("nan"), "ci": None, "p": float("nan"),
                                                     "undefined": "no positive test image of Hernia"}}},
                           {"setting": "b", "variant": "student_kd", "duplicate_of": "default",
                            "per_label": {"Effusion": {"delta_auc": 0.0412}}}]}
    lines = _per_label_markdown(doc)
    assert sum(line.startswith("## Per label") for line in lines) == 1  # the duplicate is not repeated
    assert "| Effusion | +0.041* | +0.010 to +0.070 | 0.004 | 0.008 |" in lines
    assert "| Hernia | undefined | no positive test image of Hernia | | |" in lines
    assert _per_label_markdown({"comparisons": [{"setting": "s", "variant": "v"}]}) == []


def test_the_run_table_shows_multi_label_metrics_not_dashes(nih_run):
    from medlite.report import MULTILABEL_COLUMNS, columns, table_rows

    _, results, variants = nih_run
    assert columns(results) == MULTILABEL_COLUMNS
    rows = {r[0].split(" ")[0]: dict(zip(MULTILABEL_COLUMNS, r)) for r in table_rows(results)}
    m = variants["student_kd_int8_static"]["metrics"]
    row = rows["student_kd_int8_static"]
    assert row["mean AUC"] == f"{m['auc']:.3f}" and row["AP macro"] == f"{m['ap_macro']:.3f}"
    assert row["AP micro"] == f"{m['ap_micro']:.3f}" and row["labels"] == str(m["labels_defined"])
