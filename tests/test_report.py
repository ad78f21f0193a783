"""End to end on real BreastMNIST with a tiny recipe: the explain stage, the operating point, the
files beside the report, resume, `medlite explain`, and the report in a real browser."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlite.recipe import load_recipe

TINY = [
    "data.limit=64",
    "teacher.arch=medlite_cnn_tiny",
    "teacher.epochs=2",
    "student.arch=medlite_dsconv_tiny",
    "student.epochs=2",
    "distill.scratch_baseline=false",
    "evaluate.bootstrap=50",
    "compress.methods=[int8_static]",
    "compress.targets=[student_kd]",
    "compress.int8_static.calibration_images=32",
    "bench.enabled=false",
    "explain.images_per_class=2",
    "explain.steps=8",
]


def run(out: Path, data_root: Path, extra=()):
    from medlite.pipeline import run_pipeline

    recipe = load_recipe("breastmnist", TINY + list(extra))
    return run_pipeline(recipe, out, data_root, say=lambda line: None, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("report")
    return out, run(out, data_root)


def test_explain_objects_in_results(tiny_run):
    out, results = tiny_run
    variants = {v["name"]: v for v in results["variants"]}
    assert list(variants) == ["teacher", "student_kd", "student_kd_int8_static"]
    images = variants["teacher"]["explain"]["images"]
    assert len(images) == 4  # 2 per class, the same for every variant
    for v in variants.values():
        e = v["explain"]
        assert e["images"] == images and (out / e["maps"]).is_file()
        occ = e["methods"]["occlusion"]
        assert occ["runs_on"] == "onnxruntime" and 0 <= occ["deletion_auc"] <= 1 and 0 <= occ["insertion_auc"] <= 1
        assert len(occ["per_image"]["deletion_auc"]) == 4
    assert variants["teacher"]["explain"]["methods"]["gradcam"]["runs_on"] == "pytorch"
    # the int8 file has no PyTorch module: recorded, not silently dropped
    assert "PyTorch module" in variants["student_kd_int8_static"]["explain"]["methods"]["gradcam"]["skipped"]
    # agreement with the lineage (parent chain and teachers), never by name
    assert set(variants["student_kd"]["explain"]["agreement"]) == {"teacher"}
    assert set(variants["student_kd"]["explain"]["agreement"]["teacher"]) == {"gradcam", "occlusion"}
    int8 = variants["student_kd_int8_static"]["explain"]["agreement"]
    assert set(int8) == {"student_kd", "teacher"} and set(int8["student_kd"]) == {"occlusion"}
    a = int8["student_kd"]["occlusion"]
    assert a["iou_top"] is None or 0 <= a["iou_top"] <= 1
    # independent recomputation of one agreement figure from the stored maps
    from scipy.stats import spearmanr

    with np.load(out / variants["student_kd"]["explain"]["maps"]) as s, np.load(out / variants["teacher"]["explain"]["maps"]) as t:
        rho = [spearmanr(x.ravel().astype(float), y.ravel().astype(float)).statistic for x, y in zip(s["gradcam"], t["gradcam"])]
    rho = [r for r in rho if r == r]
    got = variants["student_kd"]["explain"]["agreement"]["teacher"]["gradcam"]["spearman"]
    assert (got is None and not rho) or got == pytest.approx(np.mean(rho), abs=1e-3)


def test_operating_point_in_results_and_in_the_deployed_file(tiny_run):
    import onnx

    from medlite.export.onnx import OPERATING_POINT_KEY

    out, results = tiny_run
    for v in results["variants"]:
        op = v["metrics"]["operating_point"]
        assert op["positive_class"] == "malignant" and op["val"]["sensitivity"] >= 0.9
        assert set(op["test"]) == {"sensitivity", "specificity", "ci"} and set(op["argmax"]) == {"sensitivity", "specificity", "ci"}
        meta = {p.key: p.value for p in onnx.load(str(out / v["file"]), load_external_data=False).metadata_props}
        stored = json.loads(meta[OPERATING_POINT_KEY])
        assert stored["threshold"] == op["threshold"] and stored["positive_class"] == "malignant"


def test_files_beside_the_report(tiny_run):
    out, results = tiny_run
    classes = results["dataset"]["classes"]
    for v in results["variants"]:
        name = v["name"]
        with open(out / "predictions" / f"{name}.csv", newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0][:4] == ["image_id", "source", "true_label", "predicted_label"]
        assert rows[0][4:6] == [f"prob_{c}" for c in classes]
        assert len(rows) == 1 + 64
        # each row names its image (issue 18): the MedMNIST array entry, as splits.csv lists the test split
        with open(out / "splits.csv", newline="") as handle:
            listed = [r[0] for r in list(csv.reader(handle))[1:] if r[1] == "test"]
        assert [row[1] for row in rows[1:]] == listed and all(re.fullmatch(r"test_images\[\d+\]", r) for r in listed)
        # the confusion file is the metrics' confusion matrix, and agrees with the predictions file
        with open(out / "confusion" / f"{name}.csv", newline="") as handle:
            cm = [[int(x) for x in row[1:]] for row in list(csv.reader(handle))[1:]]
        assert cm == v["metrics"]["confusion_matrix"]
        counted = np.zeros((2, 2), int)
        for row in rows[1:]:
            counted[classes.index(row[2]), classes.index(row[3])] += 1
        assert counted.tolist() == cm
        for suffix in ("png", "svg"):
            assert (out / "figures" / f"variant_{name}.{suffix}").stat().st_size > 1000
    for stem in ("pareto", "training_curves", "dataset_examples", "explain_gradcam", "explain_occlusion"):
        assert (out / "figures" / f"{stem}.png").is_file() and (out / "figures" / f"{stem}.svg").is_file(), stem
    report = (out / "classification_report.csv").read_text()
    assert "student_kd_int8_static,malignant," in report


def test_report_is_self_contained(tiny_run):
    out, results = tiny_run
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "no network at view time"
    assert "<script" not in html.lower() or "src=" not in html.lower()
    sources = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(sources) >= 3 + 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    for link in re.findall(r'<a href="([^"#]+)"', html):
        assert (out / link).is_file(), link
    for v in results["variants"]:
        assert v["name"] in html
    for heading in ("Clinical operating point", "Faithfulness", "Agreement", "Training curves", "AUC vs file size"):
        assert heading in html


def test_rerun_reuses_every_stage_the_threshold_touched(tiny_run, data_root):
    """Writing the threshold into the ONNX files must not make a rerun redo export, compression or evaluation."""
    out, _ = tiny_run
    again = run(out, data_root)
    cached = set(again["cached_stages"])
    for name in ("teacher", "student_kd"):
        assert {name, f"{name}.export"} <= cached
    for name in ("teacher", "student_kd", "student_kd_int8_static"):
        assert {f"{name}.evaluate", f"{name}.predict", f"{name}.explain"} <= cached, name
    assert "student_kd_int8_static" in cached


def test_explain_command_on_a_run_directory(tiny_run, data_root, monkeypatch):
    from typer.testing import CliRunner

    from medlite.cli import app

    out, _ = tiny_run
    monkeypatch.setenv("MEDLITE_DATA_ROOT", str(data_root))
    result = CliRunner().invoke(app, ["explain", str(out), "--variants", "student_kd,student_kd_int8_static",
                                      "--images", str(out / "samples"), "--methods", "occlusion",
                                      "--data-root", str(data_root)])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((out / "explain" / "images.json").read_text())
    assert len(summary["images"]) == 4 and set(summary["variants"]) == {"student_kd", "student_kd_int8_static"}
    assert (out / "figures" / "explain_images_occlusion.png").is_file()


# -- the report in a real browser -------------------------------------------------------------------

@pytest.mark.browser
def test_report_renders_in_chromium_without_errors(tiny_run, tmp_path):
    from chromium import open_page, require_chromium

    binary = require_chromium()
    out, results = tiny_run
    with open_page(binary, tmp_path, (out / "report.html").as_uri()) as page:
        images = page.evaluate(
            "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
        )
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        screenshot = page.screenshot(tmp_path / "report.png")
        errors = page.errors()
    assert errors == [], errors
    assert len(images) >= 7 and all(i["complete"] and i["width"] > 0 for i in images), [i for i in images if not i["width"]]
    assert "Explanations" in headings and "Clinical operating point" in headings
    assert screenshot.stat().st_size > 10_000
    keep = os.environ.get("MEDLITE_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / "report.png")


def test_report_opens_with_the_file_predict_would_deploy(tiny_run):
    """Issue 21: the report opens with the deployed file and why, as `medlite predict RUN_DIR` chooses it."""
    from medlite.deploy.select import choose_variant

    out, results = tiny_run
    path, chosen, rule = choose_variant(out)
    html = (out / "report.html").read_text()
    main = html[html.index("<main>"):]
    assert re.findall(r'<h2 id="([^"]+)"', main)[0] == "deploy"
    section = main[: main.index('<h2 id="dataset">')]
    assert f'<b id="deploy-variant">{chosen["name"]}</b>' in section
    assert str(path.relative_to(out)) in section and chosen["runtime"] in section
    assert f'{chosen["val_metrics"]["auc"]:.3f}' in section and "chosen on the validation split" in section
    assert f'{chosen["metrics"]["auc"]:.3f}' in section and "reported after the choice" in section
    chance = [w for w in chosen.get("warnings") or [] if w.startswith("no better than chance")]
    assert ("no better than chance" in section) == bool(chance)


def test_the_deploy_section_flags_a_model_no_better_than_chance(tmp_path):
    from medlite.report import render_html

    results = {"recipe": "r", "medlite": "0", "seed": 0, "variants": [], "timings": {}, "versions": {},
               "dataset": {"name": "d", "source": "s", "origin": "o", "split": "x", "image_size": 28, "channels": 1,
                           "classes": ["a", "b"], "images": {"test": 10}, "per_class": {"test": {"a": 5, "b": 5}}}}
    deploy = {"variant": "student_kd", "file": "models/student_kd.onnx", "runtime": "onnxruntime", "bytes": 2048,
              "val_auc": 0.61, "split": "test", "reported_auc": 0.52, "reported_ci": "0.40-0.64", "rule": "chosen on ...",
              "chance": ["no better than chance: test AUC 0.520 (95% CI 0.400-0.640) includes 0.5"]}
    html = render_html(results, deploy=deploy)
    section = html[html.index('<h2 id="deploy">'):html.index('<h2 id="dataset">')]
    assert "student_kd" in section and "no better than chance: test AUC 0.520" in section
    assert "0.520" in section and "0.610" in section and "2.0 KB" in section
    assert "None: no deployable" in render_html(results, deploy={"error": "no deployable variant"})
