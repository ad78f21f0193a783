"""`medlite evaluate` for a multi-label file (sigmoid outputs, one probability per finding).

The single-label path (`evaluate.external`) reads one class per image; here an image has a 0/1
value per finding, so classes are matched by *label column*: each of the model's labels is read
from the data column of the same name (or the one `--class-map SRC=DST` names), the data's other
columns are left out and said. Metrics are MedMNIST's (mean AUC over the labels, mean accuracy at
0.5) plus per-label AUC, average precision and sensitivity/specificity at the thresholds the file
carries (chosen on its own validation split when it was made), all from the file's own outputs.
A label without positives (or negatives) among the images is undefined there, never 0.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from medlite.errors import UsageError


def label_columns(data_labels: list[str], model_labels: list[str], class_map: dict[str, str],
                  where: str) -> tuple[list[int], list[str]]:
    """For each model label, the index of the data column it is read from; and the data columns
    left out. `class_map` maps a data label to a model label (SRC=DST); unmapped labels match by name."""
    unknown = [s for s in class_map if s not in data_labels]
    if unknown:
        raise UsageError(f"--class-map: {', '.join(map(repr, unknown))} not a label of {where} "
                         f"(its labels: {', '.join(data_labels)})")
    bad = [d for d in class_map.values() if d not in model_labels]
    if bad:
        raise UsageError(f"--class-map: {', '.join(map(repr, bad))} not a label of the model "
                         f"(its labels: {', '.join(model_labels)})")
    target = {d: class_map.get(d, d) for d in data_labels}
    columns = []
    for name in model_labels:
        sources = [i for i, d in enumerate(data_labels) if target[d] == name]
        if not sources:
            raise UsageError(f"{where}: no label column for the model's label {name!r}; "
                             f"map one with --class-map DATA_LABEL={name}")
        if len(sources) > 1:
            raise UsageError(f"{where}: the data labels {', '.join(data_labels[i] for i in sources)} all map to "
                             f"the model's label {name!r}; map one of them")
        columns.append(sources[0])
    dropped = [d for d in data_labels if target[d] not in model_labels]
    return columns, dropped


def _thresholds(op: dict | None, classes: list[str]) -> dict[str, dict] | None:
    """The file's per-label thresholds in the form `multilabel_metrics` reads; None without any (0.5)."""
    if not op or "thresholds" not in op:
        return None
    rules = op.get("rules") or {}
    return {n: {"threshold": float(op["thresholds"][n]), "rule": rules.get(n)} for n in classes}


def predictions_text(ids: list[str], splits: list[str], classes: list[str], labels: np.ndarray,
                     probs: np.ndarray, decided: np.ndarray) -> str:
    """One row per image: its id and split, then per label the truth, the decision at the file's
    threshold and the probability (every digit: the metrics can be recomputed from this file)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "split", *[f"true_{c}" for c in classes], *[f"decision_{c}" for c in classes],
                     *[f"prob_{c}" for c in classes]])
    for i in range(len(probs)):
        writer.writerow([ids[i], splits[i], *map(int, labels[i]), *map(int, decided[i]),
                         *[repr(float(p)) for p in probs[i]]])
    return out.getvalue()


def evaluate_multilabel(art: Any, selection: str, variant: str | None, model: Path, data: str, read_as: str,
                        seed: int, cfg: Any, dataset: Any, *, class_map: dict[str, str], split: str, out: Path,
                        bootstrap: int, confidence: float, batch_size: int) -> dict:
    """The multi-label evaluation document of `art` on `dataset`, its files written into `out`."""
    from medlite.evaluate import external_common as ext
    from medlite.evaluate.multilabel import multilabel_metrics
    from medlite.report.figures import multilabel_panels  # local: matplotlib
    from medlite.runstate import write_atomic, write_json
    from medlite.version import __version__

    spec = art.spec
    classes = list(spec.class_names)
    where = str(dataset.origin)
    if spec.multilabel != dataset.multilabel:
        kind = lambda multi: "multi-label" if multi else "single-label"  # noqa: E731
        raise UsageError(f"{art.path}: a {kind(spec.multilabel)} model ({len(classes)} "
                         f"{'labels' if spec.multilabel else 'classes'}) cannot be tested on {where}: "
                         f"{kind(dataset.multilabel)} data")
    columns, dropped = label_columns(list(dataset.class_names), classes, class_map, where)
    images, data_labels, ids, splits = ext.split_images(dataset, split)
    images, channel_note = ext.match_model_channels(images, int(spec.channels), where)
    labels = data_labels[:, columns].astype(np.int64)
    probs = art.predict_proba(images, batch_size=batch_size)
    decided = art.decide(probs)
    seen_doc, seen_reason = ext.seen_in_training(art.path, images, ids)
    thresholds = _thresholds(art.operating_point, classes)
    metrics = multilabel_metrics(probs, labels, classes, thresholds=thresholds, bootstrap=bootstrap,
                                 confidence=confidence, seed=0, split=split)

    warnings = list(dataset.warnings) + ([channel_note] if channel_note and "colour" in channel_note else [])
    if dropped:
        warnings.append(f"data label(s) {', '.join(dropped)} are not labels of the model: left out")
    warnings += metrics["undefined"]
    if thresholds is None:
        warnings.append("the file carries no per-label thresholds: decisions at 0.5 for every label")
    doc: dict[str, Any] = {
        "kind": "medlite.external_evaluation",
        "schema": ext.SCHEMA,
        "task": "multilabel",
        "medlite_version": __version__,
        "model": {
            "given": str(model), "file": str(art.path), "variant": variant, "selection": selection,
            "runtime": art.version(), "file_bytes": art.file_bytes(), "classes": classes,
            "preprocess": spec.to_dict(), "operating_point": art.operating_point,
            "warnings": list((art.card or {}).get("warnings") or []),
        },
        "data": {
            "given": data, "read_as": read_as, "name": dataset.name, "source": dataset.source, "origin": dataset.origin,
            "section": cfg.model_dump(mode="json"), "seed": seed, "split": split, "split_origin": dataset.split_origin,
            "classes": list(dataset.class_names),
            "class_map": {dataset.class_names[c]: name for c, name in zip(columns, classes)},
            "dropped_labels": dropped,
            "native_channels": int(dataset.native_channels), "native_size": int(dataset.native_size),
            "channels_note": channel_note, "n_images": int(len(labels)),
            "per_class": {c: int(labels[:, i].sum()) for i, c in enumerate(classes)},  # positives per label
            "skipped_images": len(dataset.skipped),
        },
        "metrics": {"multilabel": metrics, "bootstrap": bootstrap, "confidence": confidence,
                    "thresholds_note": None if thresholds else "no per-label thresholds in the file: 0.5"},
        "seen_in_training": seen_doc,
        "seen_in_training_reason": seen_reason,
        "warnings": warnings,
        "files": {"json": ext.JSON_NAME, "predictions": ext.CSV_NAME, "page": ext.PAGE_NAME},
    }
    doc = ext.strict_json(doc)
    write_atomic(out / ext.CSV_NAME, predictions_text(ids, splits, classes, labels, probs, decided))
    figure = multilabel_panels("external", probs, labels, classes, out / ext.FIGURES, per_label=metrics["per_label"])
    doc["files"]["figures"] = [figure["png"], figure["svg"]]
    doc["out"] = str(out)
    write_json(out / ext.JSON_NAME, doc)
    write_atomic(out / ext.PAGE_NAME, page_html(doc, figure["uri"]))
    return doc


def page_html(doc: dict, figure_uri: str) -> str:
    """The multi-label evaluation page: headline figures, a row per label, the per-label ROC curves."""
    from medlite.evaluate.external_common import CSV_NAME, JSON_NAME, fmt_interval, fmt_number

    e = html.escape
    m, d, a = doc["model"], doc["data"], doc["metrics"]["multilabel"]
    level = int(round(doc["metrics"]["confidence"] * 100))
    rows = [("mean AUC over labels", fmt_number(a["auc"]) + fmt_interval(a["ci"], "auc") + f" ({a['labels_defined']} labels defined)"),
            ("mean accuracy at 0.5", fmt_number(a["accuracy"])),
            ("average precision (macro / micro)", f"{fmt_number(a['ap_macro'])} / {fmt_number(a['ap_micro'])}")]
    metric_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows)
    per_label = "".join(
        f"<tr><td>{e(name)}</td><td>{fmt_number(r['auc'])}{e(fmt_interval(r['ci'], 'auc'))}</td><td>{fmt_number(r['ap'])}</td>"
        f"<td>{fmt_number(r['threshold'])}</td><td>{fmt_number(r['sensitivity'])}</td><td>{fmt_number(r['specificity'])}</td>"
        f"<td>{r['positives']}</td><td>{r['negatives']}</td></tr>"
        for name, r in a["per_label"].items())
    mapping = "".join(f"<tr><td>{e(s)}</td><td>{e(t)}</td></tr>" for s, t in d["class_map"].items())
    warnings = "".join(f"<li>{e(w)}</li>" for w in doc["warnings"] + m["warnings"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medlite external validation: {e(d['name'])}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0 1rem}}td,th{{border:1px solid #ccc;padding:.2rem .6rem;text-align:left}}
th{{background:#f3f3f3}}.muted{{color:#666}}img{{max-width:100%}}</style></head><body>
<h1>External validation (multi-label)</h1>
<p><b>Model</b>: {e(m['file'])} ({e(m['runtime'])}, {m['file_bytes'] / 1024:.0f} KiB)<br>
<span class="muted">{e(m['selection'])}</span></p>
<p><b>Data</b>: {e(d['name'])} ({e(d['read_as'])}; {e(d['origin'])}): {d['n_images']} images, split <b>{e(d['split'])}</b>
({e(d['split_origin'])}), read at {m['preprocess']['image_size']} px × {m['preprocess']['channels']} ch.</p>
<h2>Labels</h2><table><tr><th>data column</th><th>model label</th></tr>{mapping}</table>
<h2>Metrics</h2><p class="muted">{level}% percentile-bootstrap intervals, {doc['metrics']['bootstrap']} resamples;
sensitivity and specificity at each label's threshold stored in the file.</p>
<table><tr><th>metric</th><th>value ({level}% CI)</th></tr>{metric_rows}</table>
<h2>Per label</h2><table><tr><th>label</th><th>AUC ({level}% CI)</th><th>AP</th><th>threshold</th><th>sensitivity</th>
<th>specificity</th><th>positives</th><th>negatives</th></tr>{per_label}</table>
<h2>ROC per label</h2><img alt="ROC curve per label" src="{figure_uri}">
<h2>Seen in training</h2><p>{e(doc['seen_in_training_reason'])}.</p>
{'<h2>Warnings</h2><ul>' + warnings + '</ul>' if warnings else ''}
<p class="muted">Predictions per image: {e(CSV_NAME)}; the document: {e(JSON_NAME)}. medlite {e(str(doc['medlite_version']))}.</p>
</body></html>
"""


def summary_lines(doc: dict) -> list[str]:
    """What `medlite evaluate` prints for a multi-label file."""
    from medlite.evaluate.external_common import CSV_NAME, JSON_NAME, PAGE_NAME, fmt_interval, fmt_number

    m, d, a = doc["model"], doc["data"], doc["metrics"]["multilabel"]
    lines = [f"model: {m['selection']}",
             f"data: {d['name']} ({d['read_as']}): {d['n_images']} images of split {d['split']} ({d['split_origin']}); "
             f"{len(d['class_map'])} labels",
             f"mean AUC {fmt_number(a['auc'])}{fmt_interval(a['ci'], 'auc')} over {a['labels_defined']} labels; mean accuracy at 0.5 "
             f"{fmt_number(a['accuracy'])}; AP macro {fmt_number(a['ap_macro'])}, micro {fmt_number(a['ap_micro'])}"]
    for name, r in a["per_label"].items():
        lines.append(f"  {name}: AUC {fmt_number(r['auc'])}, sensitivity {fmt_number(r['sensitivity'])}, specificity "
                     f"{fmt_number(r['specificity'])} at {fmt_number(r['threshold'])} ({r['positives']} positive)")
    lines += [f"warning: {w}" for w in doc["warnings"]]
    lines.append(f"seen in training: {doc['seen_in_training_reason']}" if doc["seen_in_training"] is not None
                 else f"seen in training: unknown ({doc['seen_in_training_reason']})")
    lines.append(f"wrote {Path(doc['out']) / JSON_NAME}, {Path(doc['out']) / CSV_NAME}, {Path(doc['out']) / PAGE_NAME}")
    return lines
