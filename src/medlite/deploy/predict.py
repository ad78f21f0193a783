"""`medlite predict MODEL|RUN_DIR IMAGES... [--out predictions.csv|.json]`: classify files into a table.

Inputs are image files, folders (searched recursively) or list files (`.txt`/`.lst`: one path per
line, relative to the list). Every image is decoded and adapted exactly as in training (through
`medlite.runtime.adapt`), run in batches through the deployed file's runtime, and reported with
its class, the probability of every class, a low-confidence flag and how the input was adapted
(with warnings for inputs far from the training images). Unreadable files are listed with their
reason; the rest are still classified.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from medlite.data.preprocess import list_images
from medlite.runtime import ArtifactError, open_artifact
from medlite.runtime.adapt import ImageError, load_for_model

LIST_SUFFIXES = (".txt", ".lst", ".list")
DEFAULT_MIN_CONFIDENCE = 0.6


def expand_inputs(items: Iterable[Path], hidden: list[int] | None = None) -> tuple[list[Path], list[dict]]:
    """(image paths in order, [{"file", "error"}] for inputs that do not exist).

    Folders are searched recursively, leaving out hidden entries (macOS `._*` files, `.thumbs/`):
    never images to classify. `hidden`, when given, gets their count appended."""
    images: list[Path] = []
    missing: list[dict] = []
    left_out = 0
    for item in items:
        item = Path(item)
        if item.is_dir():
            listing = list_images(item)  # hidden entries (._*, .thumbs/) left out
            images += listing.files
            left_out += listing.hidden
        elif item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
            try:
                lines = item.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as err:
                missing.append({"file": str(item), "error": f"unreadable list file ({err})"})
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                path = Path(line)
                path = path if path.is_absolute() else item.parent / path
                if path.is_file():
                    images.append(path)
                else:
                    missing.append({"file": str(path), "error": f"listed in {item.name} but not found"})
        elif item.is_file():
            images.append(item)  # any suffix: decoding decides whether it is an image
        else:
            missing.append({"file": str(item), "error": "no such file or folder"})
    if hidden is not None:
        hidden.append(left_out)
    return images, missing


def predict_files(
    model: Path,
    images: list[Path],
    *,
    runtime: str | None = None,
    threads: int = 0,
    batch_size: int = 64,
    threshold: float | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Classify `images`; returns {"model", "predictions", "unreadable", "summary"}."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ArtifactError(f"--threshold {threshold}: must be between 0 and 1")
    if not 0.0 <= min_confidence <= 1.0:
        raise ArtifactError(f"--min-confidence {min_confidence}: must be between 0 and 1")
    start = time.perf_counter()
    art = open_artifact(model, runtime=runtime, threads=threads)
    spec = art.require_spec()
    names = art.class_names
    multilabel = spec.multilabel
    if threshold is not None and len(names) != 2 and not multilabel:
        raise ArtifactError(f"--threshold: only for two-class models ({model.name} has {len(names)} classes)")
    load_s = time.perf_counter() - start
    predictions: list[dict] = []
    unreadable: list[dict] = []
    batch_px: list[np.ndarray] = []
    batch_rows: list[dict] = []
    infer_s = 0.0

    def flush() -> None:
        nonlocal infer_s
        if not batch_px:
            return
        t0 = time.perf_counter()
        probs = art.predict_proba(np.stack(batch_px), batch_size=batch_size)
        decided = art.decide(probs, threshold)
        infer_s += time.perf_counter() - t0
        if multilabel:
            cut = label_thresholds(art, threshold)
            for row, p, d in zip(batch_rows, probs, decided):
                row.update(multilabel_row(names, p, d, cut))
                predictions.append(row)
            batch_px.clear()
            batch_rows.clear()
            return
        for row, p, k in zip(batch_rows, probs, decided):
            confidence = float(p[k])
            row.update(
                predicted=names[int(k)],
                confidence=round(confidence, 6),
                probabilities={n: round(float(v), 6) for n, v in zip(names, p)},
                low_confidence=bool(confidence < min_confidence),
            )
            predictions.append(row)
        batch_px.clear()
        batch_rows.clear()

    for i, path in enumerate(images):
        try:
            pixels, adaptation = load_for_model(path, spec, art.card)
        except (ImageError, OSError) as err:
            unreadable.append({"file": str(path), "error": str(err)[:200]})
        else:
            batch_px.append(pixels)
            batch_rows.append({"file": str(path), "input": adaptation})
            if len(batch_px) >= batch_size:
                flush()
        if on_progress:
            on_progress(i + 1)
    flush()
    wall = time.perf_counter() - start
    op = art.operating_point if threshold is None else {"threshold": threshold, "source": "--threshold"}
    if multilabel:
        decision = (f"each label positive when its probability >= {threshold:g} (--threshold)" if threshold is not None
                    else f"each label positive when its probability >= its threshold ({op['source']})" if op
                    else "each label positive when its probability >= 0.5 (no stored thresholds)")
        per_class = {n: sum(n in r["positive_labels"] for r in predictions) for n in names}
    return {
        "model": {**art.describe(), "card": art.card},
        "task": "multilabel" if multilabel else "multiclass",
        "decision": decision if multilabel else (f"class {names[(art.operating_point or {}).get('positive_index', 1)]} when its probability "
                     f">= {op['threshold']:g} ({op['source']})") if op and len(names) == 2 else "highest probability",
        "min_confidence": min_confidence,
        "predictions": predictions,
        "unreadable": unreadable,
        "summary": {
            "images": len(images),
            "classified": len(predictions),
            "unreadable": len(unreadable),
            "low_confidence": sum(r["low_confidence"] for r in predictions),
            "with_warnings": sum(1 for r in predictions if r["input"]["warnings"]),
            "per_class": per_class if multilabel else {n: sum(r["predicted"] == n for r in predictions) for n in names},
            "wall_s": round(wall, 3),
            "load_s": round(load_s, 3),
            "inference_s": round(infer_s, 3),
            "images_per_s": round(len(images) / wall, 2) if wall > 0 else None,
        },
    }


def label_thresholds(art, threshold: float | None) -> dict[str, float]:
    """The threshold each label of a multi-label model is decided at: `--threshold` for all, else the file's
    stored per-label thresholds, else 0.5."""
    names = art.class_names
    if threshold is not None:
        return dict.fromkeys(names, float(threshold))
    stored = (art.operating_point or {}).get("thresholds")
    return {n: float(stored[n]) for n in names} if stored else dict.fromkeys(names, 0.5)


def multilabel_row(names: list[str], probs: np.ndarray, decided: np.ndarray, thresholds: dict[str, float]) -> dict:
    """One image of a multi-label model: every label with its probability, threshold and decision.
    `predicted` lists the positive labels ("none" when no finding is decided); `low_confidence` flags an
    image with a label whose probability lies within NEAR_THRESHOLD of its threshold (the decision would
    flip on a small change). `--min-confidence` is a softmax notion (the winning class's probability)."""
    labels = {n: {"probability": round(float(p), 6), "threshold": round(thresholds[n], 6), "positive": bool(d)}
              for n, p, d in zip(names, probs, decided)}
    positive = [n for n in names if labels[n]["positive"]]
    return {
        "predicted": "; ".join(positive) if positive else "none",
        "positive_labels": positive,
        "confidence": None,
        "probabilities": {n: labels[n]["probability"] for n in names},
        "labels": labels,
        "low_confidence": bool(any(abs(float(p) - thresholds[n]) < NEAR_THRESHOLD for n, p in zip(names, probs))),
    }


NEAR_THRESHOLD = 0.05  # multi-label: a probability this close to its label's threshold is flagged


def to_csv(result: dict) -> str:
    """One row per input file: classified rows, then unreadable ones (with the reason in `error`).
    Multi-label models: the positive labels, then per label its probability and its 0/1 decision."""
    names = list(result["model"]["preprocess"]["class_names"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if result.get("task") == "multilabel":
        writer.writerow(["file", "positive_labels", *[f"p_{n}" for n in names], *[f"decision_{n}" for n in names],
                         "near_threshold", "original_size", "original_mode", "warnings", "error"])
        for r in result["predictions"]:
            size = "x".join(str(v) for v in r["input"]["original_size"])
            writer.writerow([r["file"], r["predicted"], *[f"{r['labels'][n]['probability']:.6f}" for n in names],
                             *[int(r["labels"][n]["positive"]) for n in names], int(r["low_confidence"]),
                             size, r["input"]["original_mode"], "; ".join(r["input"]["warnings"]), ""])
        for r in result["unreadable"]:
            writer.writerow([r["file"], "", *["" for _ in names], *["" for _ in names], "", "", "", "", r["error"]])
        return out.getvalue()
    writer.writerow(["file", "predicted", "confidence", *[f"p_{n}" for n in names], "low_confidence",
                     "original_size", "original_mode", "warnings", "error"])
    for r in result["predictions"]:
        size = "x".join(str(v) for v in r["input"]["original_size"])
        writer.writerow([r["file"], r["predicted"], f"{r['confidence']:.6f}",
                         *[f"{r['probabilities'][n]:.6f}" for n in names], int(r["low_confidence"]),
                         size, r["input"]["original_mode"], "; ".join(r["input"]["warnings"]), ""])
    for r in result["unreadable"]:
        writer.writerow([r["file"], "", "", *["" for _ in names], "", "", "", "", r["error"]])
    return out.getvalue()


def write_output(result: dict, out: Path) -> None:
    """CSV or JSON by suffix, written to a temporary name and renamed (never half-written)."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        text = to_csv(result)
    elif suffix == ".json":
        text = json.dumps(result, indent=1)
    else:
        raise ArtifactError(f"--out {out}: use a .csv or .json file name")
    if not out.parent.is_dir():
        raise ArtifactError(f"--out {out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
