"""Issue 18: the report's pictures for a 7-class task (HAM10000's classes), the Pareto front and its
labels, the heat maps' colour scale, the captions; checked in matplotlib and in a real browser.

The 7-class report is built from a synthetic run directory (results.json and predictions files, no
training): what is tested is the drawing, not a model."""

from __future__ import annotations

import json
import os
import re
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from medlite.report import figures

HAM = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


# -- the Pareto front ------------------------------------------------------------------------------

def _dominated(p, points) -> bool:
    return any(a >= p[1] and c <= p[2] and (a > p[1] or c < p[2]) for n, a, c in points if n != p[0])


def test_pareto_front_is_exactly_the_non_dominated_points():
    pts = [("big", 0.95, 100.0), ("small", 0.90, 10.0), ("worse_and_bigger", 0.89, 50.0),
           ("same_cost_lower", 0.85, 10.0), ("mid", 0.93, 40.0), ("nan", float("nan"), 5.0), ("free", 0.99, 0.0),
           ("twin", 0.93, 40.0)]
    # not 'worse_and_bigger' (small beats it), 'same_cost_lower', the NaN or the zero-cost point; one of the twins
    assert figures.pareto_front(pts) == ["small", "mid", "big"]
    xs, ys = figures.front_line(pts)
    assert xs == [10.0, 40.0, 100.0] and ys == [0.90, 0.93, 0.95]


def test_the_drawn_front_passes_only_through_non_dominated_points():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pts = [(f"v{i}", float(a), float(c)) for i, (a, c) in
               enumerate(zip(rng.choice([0.8, 0.85, 0.9, 0.95], 9), rng.choice([1.0, 2.0, 4.0, 8.0], 9)))]
        xs, ys = figures.front_line(pts)
        assert xs == sorted(xs) and ys == sorted(ys)  # cheaper is never more accurate along a front
        vertices = set(zip(xs, ys))
        assert len(vertices) == len(xs)
        for name, auc, cost in pts:  # every vertex is a variant no other beats; every such variant is a vertex
            assert ((cost, auc) in vertices) == (not _dominated((name, auc, cost), pts))


def test_pareto_labels_do_not_overlap(tmp_path):
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["student_kd", "student_kd_int8_static", "student_kd_pruned", "student_kd_pruned_int8_static",
             "student_scratch", "teacher", "student_kd_int8_dynamic"]
    xs = [150.0, 53.0, 150.1, 52.0, 150.2, 170.0, 54.0]
    ys = [0.905, 0.900, 0.899, 0.897, 0.880, 0.910, 0.889]
    ax.scatter(xs, ys)
    ax.set_xscale("log"), ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    placed = figures.place_labels(ax, [(n, x, y, {"fontsize": 7}) for n, x, y in zip(names, xs, ys)])
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = []
    for ann in placed:
        ann.update_positions(renderer)
        boxes.append(Text.get_window_extent(ann, renderer))
    for (i, a), (j, b) in combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), (names[i], names[j])
    plt.close(fig)


# -- a 7-class report ------------------------------------------------------------------------------

def _variant(root: Path, name: str, rng, labels: np.ndarray, bench_ms: float, size: int, op: dict | None = None) -> dict:
    from medlite.evaluate.predictions import write_predictions

    probs = rng.dirichlet(np.ones(len(HAM)), len(labels))
    probs[np.arange(len(labels)), labels] += rng.uniform(0, 0.6, len(labels))
    probs /= probs.sum(1, keepdims=True)
    rel = f"predictions/{name}.csv"
    write_predictions(root / rel, probs, labels, HAM, sources=[f"HAM10000/{HAM[y]}/ISIC_{i:07d}.jpg" for i, y in enumerate(labels)])
    cm = np.zeros((len(HAM), len(HAM)), int)
    np.add.at(cm, (labels, probs.argmax(1)), 1)
    return {"name": name, "format": "onnx-fp32", "parent": None, "file": f"models/{name}.onnx", "file_bytes": size,
            "metrics": {"predictions": rel, "confusion_matrix": cm.tolist(), "auc": 0.7 + bench_ms, "accuracy": 0.5,
                        "ece": 0.1, "per_class": {c: {"sensitivity": 0.5, "specificity": 0.5} for c in HAM},
                        "operating_point": op},
            "bench": {"latency_ms": {"p50": bench_ms}}}


def seven_class_run(root: Path) -> dict:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(HAM), 140)
    variants = [_variant(root, n, rng, labels, ms, size) for n, ms, size in
                (("teacher", 0.09, 170_000), ("student_kd_int8_static", 0.07, 53_000))]
    results = {"recipe": "ham10000", "medlite": "0", "seed": 0, "variants": variants, "timings": {}, "versions": {},
               "dataset": {"name": "HAM10000_metadata", "source": "table", "origin": "folders/HAM10000_metadata.csv",
                           "split": "grouped by lesion_id", "image_size": 28, "channels": 3, "classes": HAM,
                           "images": {"test": len(labels)},
                           "per_class": {"test": {c: int((labels == i).sum()) for i, c in enumerate(HAM)}},
                           "skipped_images": 1,
                           "skipped": [{"file": "HAM10000/nv/ISIC_0000000.jpg", "reason": "UnidentifiedImageError: not an image"}]}}
    (root / "results.json").write_text(json.dumps(results))
    from medlite.report import write_report

    write_report(root, results)
    return results


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    root = tmp_path_factory.mktemp("seven")
    return root, seven_class_run(root)


def test_seven_class_panels_are_wide_and_the_dot_caption_is_binary_only(seven):
    root, results = seven
    html = (root / "report.html").read_text()
    cards = re.findall(r'<div class="card( wide)?"><h3>(\w+)', html)
    assert cards and all(wide for wide, _ in cards), cards  # full width: the figure is not shrunk to half
    note = html[html.index('<h2 id="per-variant">'):html.index('<div class="cards">')]
    assert "red dot" not in note and "one curve per class" in note
    # the skipped file and why, in the report as in results.json
    assert "HAM10000/nv/ISIC_0000000.jpg" in html and "UnidentifiedImageError: not an image" in html
    # every predictions file names each image's source file
    rows = (root / "predictions" / "teacher.csv").read_text().splitlines()
    assert rows[0].startswith("image_id,source,true_label,predicted_label,prob_akiec")
    assert rows[1].split(",")[1].startswith("HAM10000/") and rows[1].split(",")[1].endswith(".jpg")


def test_binary_report_keeps_the_operating_point_caption():
    from medlite.report import render_html

    results = {"recipe": "r", "medlite": "0", "seed": 0, "variants": [], "timings": {}, "versions": {},
               "dataset": {"name": "d", "source": "s", "origin": "o", "split": "x", "image_size": 28, "channels": 1,
                           "classes": ["benign", "malignant"], "images": {"test": 10},
                           "per_class": {"test": {"benign": 5, "malignant": 5}}}}
    op = {"variant": "v", "class": "malignant", "rule": "sensitivity >= 0.9", "threshold": 0.3, "sens": 0.9, "sens_ci": "-",
          "spec": 0.5, "spec_ci": "-", "argmax_sens": 0.8, "argmax_sens_ci": "-", "argmax_spec": 0.6,
          "argmax_spec_ci": "-", "val_sens": 0.9, "val_spec": 0.5}
    assert "red dot = the operating point" in render_html(results, operating_points=[op])
    assert "red dot" not in render_html(results)


def test_heat_map_gallery_has_a_colour_scale(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((3, 16, 16, 1)) * 255).astype(np.uint8)
    columns = [("teacher", rng.random((3, 16, 16)), rng.dirichlet(np.ones(7), 3))]
    fig = figures.explanation_gallery("occlusion", images, HAM[:3], columns, HAM, np.arange(3), tmp_path)
    svg = (tmp_path / "explain_occlusion.svg").read_text()  # svg.fonttype none: the text stays text
    assert "saliency of each map" in svg and "lowest" in svg and "highest" in svg
    assert fig["uri"].startswith("data:image/png;base64,")


@pytest.mark.browser
def test_seven_class_report_in_chromium_is_not_shrunk(seven, tmp_path):
    """In the page, each variant's figure is shown at (nearly) its own size, so the confusion matrix's
    8-pt cell text stays about 12 px: before, two cards a row shrank it to 6 px."""
    from chromium import open_page, require_chromium

    binary = require_chromium()
    root, _ = seven
    with open_page(binary, tmp_path, (root / "report.html").as_uri()) as page:
        page.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        shown = page.evaluate("Array.from(document.querySelectorAll('.card img')).map(i => [i.width, i.naturalWidth])")
        screenshot = page.screenshot(tmp_path / "seven.png")
        errors = page.errors()
    assert errors == [], errors
    assert len(shown) == 2 and all(w >= 0.85 * natural for w, natural in shown), shown
    keep = os.environ.get("MEDLITE_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / "report_seven_class.png")
