"""External validation: a deployed file tested on another dataset (`medlite evaluate MODEL_OR_RUN DATA`).

The model is a deployed file (.onnx, .tflite, opened in its runtime) or a run directory (then the
file `medlite predict` would deploy, chosen on validation by `medlite.deploy.select.choose_variant`).
The data is read by the same loaders as training (`medlite.data.load_dataset`), at the model's
input size and channels (its `PreprocessSpec`), from any source: a built-in recipe or a recipe
YAML (its `data` section), a MedMNIST flag, or an image folder.

The data's class names are matched to the model's by name or by an explicit `--class-map SRC=DST`;
a class that matches none of the model's, or colour data (most images colour) for a grey model, is
refused naming it: a silently dropped class or colour data turned grey would change what the
figures measure.

What is written (`--out`, atomically): `evaluation.json` (the document `--json` prints),
`predictions.csv` (one row per image, named by its id in the source), `figures/` (confusion
matrix, ROC, reliability) and `evaluation.html` (one self-contained page, figures embedded).
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from medlite.errors import UsageError
from medlite.evaluate.external_common import (  # noqa: F401 - re-exported: the command's names
    CSV_NAME, FIGURES, HASHES_NAME, JSON_NAME, PAGE_NAME, SCHEMA, SPLIT_CHOICES, colour_images, fmt_interval,
    fmt_number, match_model_channels, seen_in_training, split_images, strict_json)


# -- the inputs -----------------------------------------------------------------------------


def parse_class_map(items: list[str] | None) -> dict[str, str]:
    """`--class-map SRC=DST` options -> {data class: model class}; split on the first `=`."""
    mapping: dict[str, str] = {}
    for item in items or []:
        src, sep, dst = item.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise UsageError(f"--class-map {item!r}: expected SRC=DST (a data class = a model class)")
        if src in mapping and mapping[src] != dst:
            raise UsageError(f"--class-map {item!r}: {src!r} is already mapped to {mapping[src]!r}")
        mapping[src] = dst
    return mapping


def data_section(spec: str) -> tuple[Any, str, int, str]:
    """DATA -> (the `data` section: a mapping, or a recipe's validated one; a short name, the split
    seed, how DATA was read).

    An existing folder is an image folder; a .yaml/.yml or other existing file, or a built-in
    recipe's name, is a recipe (its `data` section and seed); otherwise a MedMNIST flag.
    """
    # local: the recipe schema (pydantic) and the MedMNIST metadata are only needed here.
    from medlite.recipe import builtin_recipes, load_recipe

    path = Path(spec).expanduser()
    if path.is_dir():
        return {"source": "folder", "root": str(path.resolve())}, path.name, 0, f"image folder {path}"
    builtin = builtin_recipes()
    if path.suffix in (".yaml", ".yml") or path.is_file() or spec in builtin:
        recipe = load_recipe(spec)
        kind = "built-in recipe" if spec in builtin and not path.is_file() else "recipe"
        return recipe.data, recipe.name, int(recipe.seed), f"{kind} {spec} (its data section)"
    from medlite.data.medmnist import medmnist_info

    try:
        flags = medmnist_info()
    except Exception as err:  # noqa: BLE001 - no medmnist package: say what DATA could have been
        flags, why = {}, f" ({err})"
    else:
        why = ""
    if spec.lower() in flags:
        return {"source": "medmnist", "flag": spec.lower()}, spec.lower(), 0, f"MedMNIST flag {spec.lower()}"
    raise UsageError(
        f"DATA {spec!r}: not an image folder, a recipe file, a built-in recipe ({', '.join(sorted(builtin))}) "
        f"or a MedMNIST flag{why}"
    )


def map_classes(data_classes: list[str], model_classes: list[str], class_map: dict[str, str], where: str) -> list[int]:
    """The model class index of every data class; refuses (naming them) classes that cannot be mapped."""
    unknown = [s for s in class_map if s not in data_classes]
    if unknown:
        raise UsageError(f"--class-map: {', '.join(map(repr, unknown))} not a class of {where} "
                         f"(its classes: {', '.join(map(repr, data_classes))})")
    bad = [d for d in dict.fromkeys(class_map.values()) if d not in model_classes]
    if bad:
        raise UsageError(f"--class-map: {', '.join(map(repr, bad))} not a class of the model "
                         f"(its classes: {', '.join(map(repr, model_classes))})")
    target = {c: class_map.get(c, c) for c in data_classes}
    unmapped = [c for c, t in target.items() if t not in model_classes]
    if unmapped:
        raise UsageError(
            f"{where}: class{'es' if len(unmapped) > 1 else ''} {', '.join(map(repr, unmapped))} "
            f"not among the model's classes ({', '.join(map(repr, model_classes))}); "
            "map each with --class-map SRC=DST"
        )
    return [model_classes.index(target[c]) for c in data_classes]


def default_out(model: Path, data_name: str) -> Path:
    """`runs/evaluate-<model>-<data>`: the run directory's or the file's name, and the data's."""
    from medlite.report.figures import safe_stem  # local: the figures module is matplotlib's

    name = model.name if model.is_dir() else model.stem
    return Path("runs") / f"evaluate-{safe_stem(name)}-{safe_stem(data_name)}"


# -- the evaluation ---------------------------------------------------------------------------


def _open_model(target: Path, threads: int):
    """(artifact, selection text, variant name or None) for a model file or a run directory."""
    from medlite.deploy.select import choose_variant
    from medlite.runtime import ArtifactError, open_artifact

    try:
        if target.is_dir():
            path, variant, rule = choose_variant(target)
            return open_artifact(path, runtime=variant.get("runtime"), threads=threads), rule, variant.get("name")
        if not target.is_file():
            raise ArtifactError(f"{target}: no such model file or run directory")
        return open_artifact(target, threads=threads), f"model file given: {target}", None
    except ArtifactError as err:
        raise UsageError(str(err)) from None


def _load(section: Any, spec, data_root: Path, seed: int, where: str):
    from pydantic import ValidationError

    from medlite.data import load_dataset
    from medlite.data.config import DataConfig

    # A grey model's data is read at its own channels: colour images are counted before they turn grey.
    model_input = {"image_size": spec.image_size, "channels": spec.channels if spec.channels == 3 else None}
    if isinstance(section, DataConfig):  # a recipe's, already validated: only the input size and channels change
        cfg = section.model_copy(update=model_input)
    else:
        try:
            cfg = DataConfig.model_validate({**section, **model_input})
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(map(str, first["loc"]))
            raise UsageError(f"{where}: data{'.' + key if key else ''}: {first['msg']}") from None
    return cfg, load_dataset(cfg, data_root, seed)


def _at_operating_point(art, probs: np.ndarray, labels: np.ndarray, classes: list[str], bootstrap: int,
                        confidence: float, seed: int) -> tuple[dict | None, np.ndarray | None]:
    """Figures at the file's stored operating point (its threshold and decision rule), beside the
    argmax for the same class; (None, None) when the file carries none (decisions are the argmax)."""
    op = art.operating_point
    if not op:
        return None, None
    from sklearn import metrics as skm

    # local: the operating-point module (sensitivity/specificity and their bootstrap) imports the stage type.
    from medlite.evaluate.thresholds import bootstrap_sens_spec, sens_spec

    decided = art.decide(probs)
    index = int(op["positive_index"])
    positive = labels == index
    out = {k: op.get(k) for k in ("positive_class", "positive_index", "threshold", "rule", "chosen_on", "source", "file")
           if op.get(k) is not None}
    for name, predicted in (("at_threshold", decided == index), ("argmax", probs.argmax(1) == index)):
        sens, spec = sens_spec(predicted, positive)
        out[name] = {"sensitivity": sens, "specificity": spec,
                     "ci": bootstrap_sens_spec(predicted, positive, bootstrap, confidence, seed)}
    out["accuracy"] = float((decided == labels).mean())
    out["balanced_accuracy"] = float(skm.balanced_accuracy_score(labels, decided))
    out["confusion_matrix"] = skm.confusion_matrix(labels, decided, labels=list(range(len(classes)))).tolist()
    out["n_positive"], out["n_negative"] = int(positive.sum()), int((~positive).sum())
    return out, decided


def predictions_text(ids: list[str], splits: list[str], data_names: list[str], data_labels: np.ndarray,
                     to_model: list[int], probs: np.ndarray, classes: list[str], decided: np.ndarray | None) -> str:
    """One row per image: its id in the source, split, its class in the data and in the model,
    the argmax, the decision at the operating point (when the file has one), every probability."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "split", "data_class", "true_label", "predicted_label",
                     *(["operating_point_label"] if decided is not None else []), *[f"prob_{c}" for c in classes]])
    for i, row in enumerate(probs):
        label = int(data_labels[i])
        writer.writerow([ids[i], splits[i], data_names[label], classes[to_model[label]], classes[int(row.argmax())],
                         *([classes[int(decided[i])]] if decided is not None else []),
                         *[repr(float(p)) for p in row]])  # repr: every digit, metrics can be recomputed
    return out.getvalue()


def evaluate_external(model: Path, data: str, data_root: Path, *, class_map: dict[str, str] | None = None,
                      split: str = "test", out: Path | None = None, bootstrap: int = 1000,
                      confidence: float = 0.95, threads: int = 0, batch_size: int = 256) -> dict:
    """Test `model` (a file or a run directory) on `data`; write the files into `out`; the document."""
    from medlite.version import __version__
    from medlite.evaluate.metrics import classification_metrics
    from medlite.runstate import is_run_dir, write_atomic, write_json

    if split not in SPLIT_CHOICES:
        raise UsageError(f"--split {split!r}: choose from {', '.join(SPLIT_CHOICES)}")
    if bootstrap < 0:
        raise UsageError(f"--bootstrap {bootstrap}: must be 0 or more")
    model = Path(model)
    section, data_name, seed, read_as = data_section(data)
    out = Path(out) if out is not None else default_out(model, data_name)
    if out.exists() and (is_run_dir(out) or (out / "results.json").is_file()):
        raise UsageError(f"--out {out}: a run directory; give another folder for the evaluation")
    art, selection, variant = _open_model(model, threads)
    if art.spec is None:
        raise UsageError(f"{art.path}: no preprocessing spec ({art.spec_source}); cannot read data for it")
    spec = art.spec
    classes = list(spec.class_names)
    cfg, dataset = _load(section, spec, data_root, seed, data)
    if spec.multilabel or dataset.multilabel:  # labels matched by column, not one class per image
        from medlite.evaluate.external_multilabel import evaluate_multilabel

        return evaluate_multilabel(art, selection, variant, model, data, read_as, seed, cfg, dataset,
                                   class_map=class_map or {}, split=split, out=out, bootstrap=bootstrap,
                                   confidence=confidence, batch_size=batch_size)
    where = f"{dataset.origin}"
    to_model = map_classes(list(dataset.class_names), classes, class_map or {}, where)
    images, data_labels, ids, splits = split_images(dataset, split)
    images, channel_note = match_model_channels(images, int(spec.channels), where)
    labels = np.asarray(to_model, np.int64)[data_labels]
    probs = art.predict_proba(images, batch_size=batch_size)
    seen_doc, seen_reason = seen_in_training(art.path, images, ids)

    warnings = list(dataset.warnings) + ([channel_note] if channel_note and "colour" in channel_note else [])
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        warnings.append(f"only one of the model's classes ({classes[present[0]]}) is among the images: AUC is undefined")
    missing = [classes[i] for i in range(len(classes)) if i not in present]
    if missing and len(present) >= 2:
        warnings.append(f"no images of the model's class(es) {', '.join(missing)}: AUC is over the classes present")
    argmax = classification_metrics(probs, labels, classes, bootstrap=bootstrap, confidence=confidence, seed=0)
    at_op, decided = _at_operating_point(art, probs, labels, classes, bootstrap, confidence, 0)

    doc: dict[str, Any] = {
        "kind": "medlite.external_evaluation",
        "schema": SCHEMA,
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
            "class_map": {c: classes[t] for c, t in zip(dataset.class_names, to_model)},
            "native_channels": int(dataset.native_channels), "native_size": int(dataset.native_size),
            "channels_note": channel_note, "n_images": int(len(labels)),
            "per_class": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
            "skipped_images": len(dataset.skipped),
        },
        "metrics": {"argmax": argmax, "operating_point": at_op,
                    "operating_point_note": None if at_op else "the file carries no operating point: decisions are the argmax",
                    "bootstrap": bootstrap, "confidence": confidence},
        # How many of these images the training set already held: external validation on them is not external.
        "seen_in_training": seen_doc,
        "seen_in_training_reason": seen_reason,
        "warnings": warnings,
        "files": {"json": JSON_NAME, "predictions": CSV_NAME, "page": PAGE_NAME},
    }
    doc = strict_json(doc)
    write_atomic(out / CSV_NAME, predictions_text(ids, splits, list(dataset.class_names), data_labels, to_model,
                                                  probs, classes, decided))
    figure = _figure(probs, labels, classes, argmax, at_op, out / FIGURES)
    doc["files"]["figures"] = [figure["png"], figure["svg"]]
    doc["out"] = str(out)
    write_json(out / JSON_NAME, doc)
    write_atomic(out / PAGE_NAME, page_html(doc, figure["uri"]))
    return doc


def _figure(probs: np.ndarray, labels: np.ndarray, classes: list[str], argmax: dict, at_op: dict | None, folder: Path) -> dict:
    """The report's per-variant panels (confusion matrix, ROC with the operating point, reliability)."""
    from medlite.report.figures import variant_panels  # local: matplotlib

    op = None
    if at_op:  # the shape variant_panels draws the threshold's and the argmax's point from
        op = {"positive_index": at_op["positive_index"], "threshold": at_op["threshold"],
              "test": at_op["at_threshold"], "argmax": at_op["argmax"]}
        if any(v is None for part in (op["test"], op["argmax"]) for v in (part["sensitivity"], part["specificity"])):
            op = None  # one class absent: no point on the ROC curve to draw
    return variant_panels("external", probs, labels, classes, np.asarray(argmax["confusion_matrix"]), folder, op=op)


# -- the page -------------------------------------------------------------------------------


def page_html(doc: dict, figure_uri: str) -> str:
    """One self-contained page: no external assets, the figure embedded as a PNG data URI."""
    e = html.escape
    m, d, a = doc["model"], doc["data"], doc["metrics"]["argmax"]
    op = doc["metrics"]["operating_point"]
    level = int(round(doc["metrics"]["confidence"] * 100))
    rows = [
        ("AUC", fmt_number(a["auc"]) + fmt_interval(a["ci"], "auc")),
        ("accuracy (argmax)", fmt_number(a["accuracy"]) + fmt_interval(a["ci"], "accuracy")),
        ("balanced accuracy (argmax)", fmt_number(a["balanced_accuracy"])),
        ("macro F1 (argmax)", fmt_number(a["f1_macro"])),
        ("ECE (calibration)", fmt_number(a["ece"])),
    ]
    if op:
        t, g = op["at_threshold"], op["argmax"]
        rows += [
            (f"sensitivity for {op['positive_class']} at threshold {op['threshold']:.3f}",
             fmt_number(t["sensitivity"]) + fmt_interval(t["ci"], "sensitivity")),
            (f"specificity at threshold {op['threshold']:.3f}", fmt_number(t["specificity"]) + fmt_interval(t["ci"], "specificity")),
            ("sensitivity at argmax", fmt_number(g["sensitivity"]) + fmt_interval(g["ci"], "sensitivity")),
            ("specificity at argmax", fmt_number(g["specificity"]) + fmt_interval(g["ci"], "specificity")),
            ("accuracy at the operating point", fmt_number(op["accuracy"])),
            ("balanced accuracy at the operating point", fmt_number(op["balanced_accuracy"])),
        ]
    metric_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows)
    per_class = "".join(
        f"<tr><td>{e(name)}</td><td>{fmt_number(v['sensitivity'])}</td><td>{fmt_number(v['specificity'])}</td><td>{v['support']}</td></tr>"
        for name, v in a["per_class"].items())
    mapping = "".join(f"<tr><td>{e(s)}</td><td>{e(t)}</td></tr>" for s, t in d["class_map"].items())
    warnings = "".join(f"<li>{e(w)}</li>" for w in doc["warnings"] + m["warnings"])
    op_text = (f"stored operating point: {e(str(op['positive_class']))} if p ≥ {op['threshold']:.3f} "
               f"({e(str(op.get('rule') or ''))})" if op else e(doc["metrics"]["operating_point_note"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medlite external validation: {e(d['name'])}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0 1rem}}td,th{{border:1px solid #ccc;padding:.2rem .6rem;text-align:left}}
th{{background:#f3f3f3}}.muted{{color:#666}}img{{max-width:100%}}</style></head><body>
<h1>External validation</h1>
<p><b>Model</b>: {e(m['file'])} ({e(m['runtime'])}, {m['file_bytes'] / 1024:.0f} KiB)<br>
<span class="muted">{e(m['selection'])}</span></p>
<p><b>Data</b>: {e(d['name'])} ({e(d['read_as'])}; {e(d['origin'])}): {d['n_images']} images, split <b>{e(d['split'])}</b>
({e(d['split_origin'])}), read at {m['preprocess']['image_size']} px × {m['preprocess']['channels']} ch
(native {d['native_size']} px × {d['native_channels']} ch{'; ' + e(d['channels_note']) if d['channels_note'] else ''}).</p>
<h2>Classes</h2><table><tr><th>data class</th><th>model class</th></tr>{mapping}</table>
<h2>Metrics</h2><p class="muted">{level}% percentile-bootstrap intervals, {doc['metrics']['bootstrap']} resamples. {op_text}.</p>
<table><tr><th>metric</th><th>value ({level}% CI)</th></tr>{metric_rows}</table>
<h2>Per class (argmax)</h2><table><tr><th>class</th><th>sensitivity</th><th>specificity</th><th>images</th></tr>{per_class}</table>
<h2>Confusion matrix, ROC, reliability</h2><img alt="confusion matrix, ROC and reliability diagram" src="{figure_uri}">
<h2>Seen in training</h2><p>{e(doc['seen_in_training_reason'])}.</p>
{'<h2>Warnings</h2><ul>' + warnings + '</ul>' if warnings else ''}
<p class="muted">Predictions per image: {e(CSV_NAME)}; the document: {e(JSON_NAME)}. medlite {e(str(doc['medlite_version']))}.</p>
</body></html>
"""


def summary_lines(doc: dict) -> list[str]:
    """What the command prints: the model, the data, the headline figures with their intervals."""
    if doc.get("task") == "multilabel":
        from medlite.evaluate.external_multilabel import summary_lines as multilabel_lines

        return multilabel_lines(doc)
    m, d, a = doc["model"], doc["data"], doc["metrics"]["argmax"]
    op = doc["metrics"]["operating_point"]
    lines = [
        f"model: {m['selection']}",
        f"data: {d['name']} ({d['read_as']}): {d['n_images']} images of split {d['split']} ({d['split_origin']}); "
        f"classes {json.dumps(d['class_map'])}",
        f"AUC {fmt_number(a['auc'])}{fmt_interval(a['ci'], 'auc')}; accuracy {fmt_number(a['accuracy'])}{fmt_interval(a['ci'], 'accuracy')}; "
        f"balanced accuracy {fmt_number(a['balanced_accuracy'])}; ECE {fmt_number(a['ece'])} (argmax)",
    ]
    if op:
        t = op["at_threshold"]
        lines.append(f"operating point {op['positive_class']} >= {op['threshold']:.3f}: sensitivity "
                     f"{fmt_number(t['sensitivity'])}{fmt_interval(t['ci'], 'sensitivity')}, specificity "
                     f"{fmt_number(t['specificity'])}{fmt_interval(t['ci'], 'specificity')}")
    else:
        lines.append(doc["metrics"]["operating_point_note"])
    lines += [f"warning: {w}" for w in doc["warnings"]]
    lines.append(f"seen in training: {doc['seen_in_training_reason']}" if doc["seen_in_training"] is not None
                 else f"seen in training: unknown ({doc['seen_in_training_reason']})")
    lines.append(f"wrote {Path(doc['out']) / JSON_NAME}, {Path(doc['out']) / CSV_NAME}, {Path(doc['out']) / PAGE_NAME}")
    return lines
