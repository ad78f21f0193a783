"""Everything `report.html` shows, computed from results.json, the predictions files, the stored
explanation maps and (for pictures of images) the dataset."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from medlite.runstate import write_atomic


def _csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def confusion_csv(cm: np.ndarray, classes: list[str]) -> str:
    return _csv([["true \\ predicted", *classes]] + [[c, *map(int, row)] for c, row in zip(classes, cm)])


def classification_rows(name: str, probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[list]:
    from sklearn.metrics import classification_report

    report = classification_report(labels, probs.argmax(1), labels=list(range(len(classes))), target_names=classes,
                                   output_dict=True, zero_division=0)
    rows = []
    for key, value in report.items():
        if key == "accuracy":
            rows.append([name, "accuracy", "", "", round(float(value), 4), len(labels)])
        else:
            rows.append([name, key, round(value["precision"], 4), round(value["recall"], 4), round(value["f1-score"], 4),
                         int(value["support"])])
    return rows


PER_LABEL_HEADER = ["variant", "label", "auc", "auc_ci", "ap", "positives", "threshold", "rule", "sensitivity",
                    "specificity", "sensitivity_ci", "specificity_ci"]


def per_label_rows(name: str, metrics: dict) -> list[list]:
    """One row per label of a multi-label variant (`metrics.per_label`, measured on its deployed file)."""
    rows = []
    for label, r in (metrics.get("per_label") or {}).items():
        ci = r.get("ci") or {}
        rnd = lambda x: None if x is None or x != x else round(float(x), 4)  # noqa: E731
        rows.append([name, label, rnd(r.get("auc")), _ci(ci.get("auc")), rnd(r.get("ap")), r.get("positives"),
                     rnd(r.get("threshold")), r.get("rule"), rnd(r.get("sensitivity")), rnd(r.get("specificity")),
                     _ci(ci.get("sensitivity")), _ci(ci.get("specificity"))])
    return rows


def _ci(pair) -> str:
    return f"{pair[0]:.3f}-{pair[1]:.3f}" if pair else "-"


def deploy_choice(root: Path, results: dict) -> dict:
    """What the report opens with: the file `medlite predict RUN_DIR` would deploy and why.

    The choice is `medlite.deploy.select.choose_variant`'s (the same function predict, serve and
    `medlite models` call, reading the results.json just written), never a rule of the report's own.
    """
    from medlite.deploy.select import evaluate_split, selection_auc, choose_variant
    from medlite.runtime import ArtifactError

    try:
        path, variant, rule = choose_variant(root)
    except ArtifactError as err:  # nothing deployable (e.g. a runtime not installed here): say why
        return {"error": str(err)}
    split = evaluate_split(root)
    metrics = variant.get("metrics") or {}
    ci = (metrics.get("ci") or {}).get("auc")
    return {
        "variant": variant["name"], "file": str(path.relative_to(root)), "runtime": variant.get("runtime"),
        "bytes": variant.get("file_bytes") or path.stat().st_size, "val_auc": selection_auc(variant, split),
        "split": split, "reported_auc": metrics.get("auc") if split != "val" else None,
        "reported_ci": _ci(ci) if ci and split != "val" else None, "rule": rule,
        # The evaluate stage's own verdict (medlite.evaluate.stage.no_better_than_chance), kept on the variant.
        "chance": [w for w in variant.get("warnings") or [] if w.startswith("no better than chance")],
    }


def build_report(root: Path, results: dict, dataset=None) -> None:
    from medlite.evaluate.predictions import read_predictions
    from medlite.report import figures, render_html

    figs = root / "figures"
    classes = list(results["dataset"]["classes"])
    extra: dict = {"variant_figures": {}, "operating_points": [], "files": [], "warnings": {},
                   "deploy": deploy_choice(root, results)}
    if (results.get("dataset") or {}).get("warnings"):  # every table and the report carry the data's warnings
        extra["warnings"]["data"] = list(results["dataset"]["warnings"])
    report_rows = [["variant", "class", "precision", "recall", "f1", "support"]]
    label_rows = [PER_LABEL_HEADER]
    extra["per_label"] = []  # multi-label: {variant, AUC per label}, for the report's per-label table
    points = []
    for v in results["variants"]:
        name, m = v["name"], v.get("metrics") or {}
        if v.get("warnings"):
            extra["warnings"][name] = v["warnings"]
        latency = ((v.get("bench") or {}).get("latency_ms") or {}).get("p50")
        if m.get("auc") is not None and v.get("file_bytes"):
            points.append((name, m["auc"], v["file_bytes"], latency))
        pred_path = root / m["predictions"] if m.get("predictions") else None
        if pred_path is None or not pred_path.is_file():
            continue
        _, labels, probs, _ = read_predictions(pred_path)
        if labels.ndim == 2:  # multi-label: per-label ROC and table, no confusion matrix
            label_rows += per_label_rows(name, m)
            extra["per_label"].append({"variant": name, "auc": m.get("auc"),
                                       "labels": {k: r.get("auc") for k, r in (m.get("per_label") or {}).items()}})
            extra["variant_figures"][name] = figures.multilabel_panels(name, probs, labels, classes, figs,
                                                                       m.get("per_label"))
            if "cooccurrence_figure" not in extra and dataset is None:
                extra["cooccurrence_figure"] = figures.label_cooccurrence(labels, classes, figs)
            continue
        cm = np.array(m.get("confusion_matrix") or np.zeros((len(classes),) * 2, int))
        write_atomic(root / "confusion" / f"{figures.safe_stem(name)}.csv", confusion_csv(cm, classes))
        report_rows += classification_rows(name, probs, labels, classes)
        op = m.get("operating_point")
        extra["variant_figures"][name] = figures.variant_panels(name, probs, labels, classes, cm, figs, op)
        if op:
            extra["operating_points"].append({
                "variant": name, "class": op["positive_class"], "rule": op["rule"], "threshold": op["threshold"],
                "sens": op["test"]["sensitivity"], "sens_ci": _ci(op["test"]["ci"].get("sensitivity")),
                "spec": op["test"]["specificity"], "spec_ci": _ci(op["test"]["ci"].get("specificity")),
                "argmax_sens": op["argmax"]["sensitivity"], "argmax_sens_ci": _ci(op["argmax"]["ci"].get("sensitivity")),
                "argmax_spec": op["argmax"]["specificity"], "argmax_spec_ci": _ci(op["argmax"]["ci"].get("specificity")),
                "val_sens": op["val"]["sensitivity"], "val_spec": op["val"]["specificity"],
            })
    if len(report_rows) > 1:
        write_atomic(root / "classification_report.csv", _csv(report_rows))
    if len(label_rows) > 1:
        write_atomic(root / "per_label_report.csv", _csv(label_rows))
    extra["training_figure"] = figures.training_curves(
        {v["name"]: (v.get("train") or {}).get("history") or [] for v in results["variants"]}, figs)
    extra["pareto_figure"] = figures.pareto(points, figs)
    if dataset is not None:
        test = dataset.splits["test"]
        rng = np.random.default_rng(0)
        has = (lambda i: test.labels[:, i] == 1) if dataset.multilabel else (lambda i: test.labels == i)
        examples = {c: test.images[np.sort(rng.permutation(np.flatnonzero(has(i)))[:6])]
                    for i, c in enumerate(dataset.class_names)}
        extra["dataset_figure"] = figures.dataset_examples(examples, figs)
        if dataset.multilabel:  # over every split: which findings come together
            every = np.concatenate([s.labels for s in dataset.splits.values() if len(s)])
            extra["cooccurrence_figure"] = figures.label_cooccurrence(every, list(dataset.class_names), figs)
    _explanations(root, results, dataset, classes, extra)
    _layers(root, results, figs, extra)
    for folder in ("predictions", "confusion", "figures", "explain"):
        extra["files"] += sorted(str(p.relative_to(root)) for p in (root / folder).glob("*") if p.is_file())
    for table in ("per_label_report.csv", "classification_report.csv"):
        if (root / table).is_file():
            extra["files"].insert(0, table)
    write_atomic(root / "report.html", render_html(results, **extra))


def _layers(root: Path, results: dict, figs: Path, extra: dict) -> None:
    """The per-layer section (medlite.report.layers), rendered by its own template partial."""
    from markupsafe import Markup

    from medlite.report.layers import layer_sections, render_section

    sections = layer_sections(root, results, figs)
    extra["layers_html"] = Markup(render_section(sections)) if sections else None


def _explanations(root: Path, results: dict, dataset, classes: list[str], extra: dict) -> None:
    """Galleries (every explained variant side by side on the same images), faithfulness, agreement."""
    explained = [v for v in results["variants"] if (v.get("explain") or {}).get("maps")]
    extra["faithfulness"], extra["agreement"], extra["galleries"] = [], [], []
    for v in explained:
        e = v["explain"]
        for method, facts in e["methods"].items():
            extra["faithfulness"].append({
                "variant": v["name"], "method": method, "kind": facts.get("kind"), "skipped": facts.get("skipped"),
                "runs_on": facts.get("runs_on"), "deletion": facts.get("deletion_auc"), "insertion": facts.get("insertion_auc"),
                "random_deletion": e["random"]["deletion_auc"], "random_insertion": e["random"]["insertion_auc"],
                "detail": ", ".join(f"{k} {facts[k]}" for k in ("layer", "window", "samples") if k in facts),
            })
        for other, by_method in (e.get("agreement") or {}).items():
            for method, a in by_method.items():
                extra["agreement"].append({"variant": v["name"], "reference": other, "method": method,
                                           "spearman": a["spearman"], "iou": a["iou_top"], "fraction": a["top_fraction"]})
    if not explained or dataset is None:
        return
    from medlite.explain.stage import _load_maps
    from medlite.report import figures

    first = explained[0]["explain"]
    split = dataset.splits[first["split"]]
    idx = np.array(first["images"], int)
    images = split.images[idx]
    targets = np.array(first["targets"], int)
    methods = []
    for v in explained:
        methods += [m for m in v["explain"]["methods"] if m not in methods]
    for method in methods:
        columns = []
        for v in explained:
            e = v["explain"]
            if e["images"] != first["images"] or "skipped" in e["methods"].get(method, {"skipped": 1}):
                continue
            maps = _load_maps(root / e["maps"])
            if method in maps:
                columns.append((v["name"], maps[method], np.array(e["probabilities"])))
        if columns:
            rule = first.get("target_rule", "the true class")
            title = None if rule == "the true class" else (  # multi-label: the explained label, per row
                f"{method}: where each variant looks for the explained label ({rule}; row: that label)")
            fig = figures.explanation_gallery(method, images, [classes[t] for t in targets], columns, classes, targets,
                                              root / "figures", title=title)
            extra["galleries"].append({"method": method, "figure": fig, "variants": [c[0] for c in columns]})
