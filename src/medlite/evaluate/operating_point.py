"""A clinical operating point: a decision threshold for one class, chosen on the validation split.

At the argmax a classifier with a good AUC can still miss many positive cases; a clinician picks
the trade-off instead ("find at least 90% of the malignant cases"). The threshold is chosen from
the *deployed file's* validation probabilities, written into the file's metadata
(`medlite.operating_point`, read by the edge runner), and the test-split sensitivity and
specificity at that threshold are reported with percentile-bootstrap intervals beside the argmax
figures.

This stage (`<variant>.predict`) also writes `predictions/<variant>.csv`: one row per image of
the evaluated split: image_id (its index in that split), source (its file or array entry), true_label, predicted_label (argmax),
then prob_<class> for every class in class order; plus `operating_point_label` when a threshold
is set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medlite.errors import UsageError
from medlite.evaluate.predictions import write_predictions
# The threshold arithmetic, shared with the multi-label metrics (re-exported: one place it is defined).
from medlite.evaluate.thresholds import bootstrap_sens_spec, choose_threshold, sens_spec  # noqa: F401
from medlite.runtime import decide, get_runtime  # one decision rule, for the evaluation and every device
from medlite.stage import Stage
from medlite.runstate import sha256, write_json

PREDICT_SCHEMA = 3  # bump when the predictions file or the operating-point facts change


def positive_index(cfg, class_names: list[str]) -> int:
    """The index of the operating point's class; one-line error naming the key when it is not a class."""
    if cfg.positive_class is None:
        if len(class_names) != 2:
            raise UsageError(
                f"evaluate.operating_point.positive_class: required with {len(class_names)} classes "
                f"(choose from {', '.join(class_names)})"
            )
        return 1
    if cfg.positive_class not in class_names:
        raise UsageError(
            f"evaluate.operating_point.positive_class: {cfg.positive_class!r} is not a class of this dataset "
            f"(choose from {', '.join(repr(c) for c in class_names)})"
        )
    return class_names.index(cfg.positive_class)


def operating_point(val_probs, val_labels, test_probs, test_labels, class_names, cfg, evaluate_cfg, seed: int) -> dict:
    """Choose the threshold on validation; report it on the evaluated split, beside the argmax."""
    index = positive_index(cfg, class_names)
    threshold, rule = choose_threshold(val_probs[:, index], val_labels == index, cfg)
    val_sens, val_spec = sens_spec(val_probs[:, index] >= threshold, val_labels == index)
    positive = test_labels == index
    at_threshold = test_probs[:, index] >= threshold
    at_argmax = test_probs.argmax(1) == index
    out = {
        "positive_class": class_names[index],
        "positive_index": index,
        "rule": rule,
        "threshold": float(threshold),
        "val": {"sensitivity": round(val_sens, 4), "specificity": round(val_spec, 4), "n": int(len(val_labels))},
    }
    for name, predicted in (("test", at_threshold), ("argmax", at_argmax)):
        sens, spec = sens_spec(predicted, positive)
        out[name] = {
            "sensitivity": round(sens, 4), "specificity": round(spec, 4),
            "ci": bootstrap_sens_spec(predicted, positive, evaluate_cfg.bootstrap, evaluate_cfg.confidence, seed),
        }
    out["split"] = evaluate_cfg.split
    out["n_positive"], out["n_negative"] = int(positive.sum()), int((~positive).sum())
    return out


def metadata_value(op: dict) -> str:
    """What goes into the ONNX file under OPERATING_POINT_KEY (what a device needs, nothing else)."""
    if "thresholds" in op:  # multi-label: a threshold per label
        return json.dumps({"thresholds": op["thresholds"], "rule": op["rule"],
                           "decision": "each label positive if its p >= its threshold"})
    keep = ("positive_class", "positive_index", "threshold", "rule")
    return json.dumps({k: op[k] for k in keep} | {"decision": "positive_class if p >= threshold else argmax of the others"})


def refresh_records(run, path: Path) -> None:
    """After rewriting a file's metadata in place, update the hash every stage record holds for it.

    The model is unchanged (stage keys use `content_hash`, blind to this metadata); only the
    records' integrity check must learn the file's new bytes.
    """
    rel, digest = run.rel(path), sha256(path)
    for record_path in sorted(run.stages.glob("*.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        outputs = record.get("outputs", {})
        if rel in outputs and outputs[rel] != digest:
            outputs[rel] = digest
            write_json(record_path, record)


def check_config(recipe, class_names: list[str], multilabel: bool = False) -> None:
    """Fail before training when the operating point names a class the data does not have. Multi-label
    data gets a threshold per label by the operating point's rule: a positive class has no meaning there."""
    cfg = recipe.evaluate.operating_point
    if cfg is None:
        return
    if multilabel:
        if cfg.positive_class is not None:
            raise UsageError("evaluate.operating_point.positive_class: multi-label data gets a threshold per label "
                             "(by the rule: sensitivity, specificity or youden); leave positive_class out")
        return
    positive_index(cfg, class_names)


def predict_stage(ctx, variant) -> Stage:
    """Predictions file and operating point of one variant, from its deployed file (its own record,
    `variant.prediction`, beside the evaluate stage's metrics)."""
    cfg = ctx.recipe.evaluate
    model_path = ctx.run.root / variant.file
    csv_path = ctx.run.root / "predictions" / f"{variant.name}.csv"

    def compute() -> dict:
        from medlite.export.onnx import OPERATING_POINT_KEY, write_metadata

        names = list(ctx.dataset.class_names)
        split = ctx.dataset.splits[cfg.split]
        probs = ctx.inference.probabilities(variant, cfg.split)
        op = None
        if ctx.dataset.multilabel:
            return _predict_multilabel(probs, split, names)
        if cfg.operating_point is not None:
            val = ctx.dataset.splits["val"]
            if len(val) == 0:
                raise UsageError("evaluate.operating_point: the data has no validation split to choose the threshold on")
            val_probs = ctx.inference.probabilities(variant, "val")
            op = operating_point(val_probs, val.labels, probs, split.labels, names, cfg.operating_point, cfg, ctx.recipe.seed)
        # Into the deployed file's own metadata where its runtime reads it from there (ONNX; or out of it,
        # when the recipe no longer sets one); other formats carry it in the model card sidecar
        # (medlite.export.card), which every consumer reads.
        if get_runtime(variant.runtime).metadata_in_file and write_metadata(
                model_path, {OPERATING_POINT_KEY: metadata_value(op) if op else None}):
            refresh_records(ctx.run, model_path)
        decided = decide(probs, op["positive_index"], op["threshold"]) if op else None
        write_predictions(csv_path, probs, split.labels, names, decided, split.ids)
        return {"predictions": ctx.run.rel(csv_path), "operating_point": op}

    def _predict_multilabel(probs, split, names: list[str]) -> dict:
        """Multi-label: per-label thresholds chosen on validation (always: a device needs a decision per
        label), into the file like a single threshold, and the predictions file in multi-hot form."""
        from medlite.evaluate.multilabel import deployed_thresholds
        from medlite.runtime import decide_labels
        from medlite.export.onnx import OPERATING_POINT_KEY, write_metadata

        val = ctx.dataset.splits["val"]
        if len(val) == 0:
            raise UsageError("evaluate: multi-label data needs a validation split to choose the per-label thresholds on")
        op = deployed_thresholds(ctx.inference.probabilities(variant, "val"), val.labels, names, cfg.operating_point,
                                 cfg.split)
        if get_runtime(variant.runtime).metadata_in_file and write_metadata(
                model_path, {OPERATING_POINT_KEY: metadata_value(op)}):
            refresh_records(ctx.run, model_path)
        write_predictions(csv_path, probs, split.labels, names, decide_labels(probs, op, names), split.ids)
        return {"predictions": ctx.run.rel(csv_path), "operating_point": op}

    def emit(facts: dict):
        variant.prediction = facts
        op = facts["operating_point"]
        if op is not None and "thresholds" in op:
            ctx.say(f"{variant.name}: per-label thresholds ({op['rule']}): " +
                    ", ".join(f"{k} {v:.3f}" for k, v in op["thresholds"].items()))
        elif op is not None:
            ctx.say(
                f"{variant.name}: {op['positive_class']} threshold {op['threshold']:.3f} ({op['rule']}): "
                f"{op['split']} sensitivity {op['test']['sensitivity']:.3f}, specificity {op['test']['specificity']:.3f}"
                f" (argmax {op['argmax']['sensitivity']:.3f} / {op['argmax']['specificity']:.3f})"
            )
        return variant

    return Stage(name=f"{variant.name}.predict", kind="predict", schema=PREDICT_SCHEMA, inputs=[variant],
                 config=[cfg.model_dump(), ctx.dataset.fingerprint(), ctx.recipe.seed],
                 outputs=[csv_path, model_path], compute=compute, emit=emit, plan=lambda: variant)
