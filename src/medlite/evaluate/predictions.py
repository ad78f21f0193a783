"""Per-image predictions of a variant as CSV: `predictions/<variant>.csv` in the run directory.

Columns: `image_id` (index in the evaluated split), `source` (where the image came from, as in
`splits.csv`: a folder's or table's file path relative to its root, `test_images[12]` for a MedMNIST
array: a clinician finds a misclassified image from it), `true_label`, `predicted_label` (class
names) and `prob_<class>` per class. Paired statistics (study/stats.py) and the report read
the same file, so comparisons are made on the same images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from medlite.runstate import write_atomic


def predictions_csv(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                    decided: np.ndarray | None = None, sources: Sequence[str] | None = None) -> str:
    """The CSV text; `decided` (class indices at an operating point) adds `operating_point_label`;
    `sources` (the split's image ids, one per row) adds `source` after `image_id`.
    Multi-label (`labels` N x K multi-hot): `true_<label>` (0/1), `prob_<label>` and, with `decided`
    (multi-hot at the per-label thresholds), `decision_<label>` per label."""
    if sources is not None and len(sources) != len(probs):
        raise ValueError(f"predictions: {len(sources)} sources for {len(probs)} rows")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["image_id", "source"] if sources is not None else ["image_id"]
    first = (lambda i: [i, str(sources[i])]) if sources is not None else (lambda i: [i])  # noqa: E731
    if np.ndim(labels) == 2:
        writer.writerow([*head, *[f"true_{n}" for n in class_names], *[f"prob_{n}" for n in class_names],
                         *([f"decision_{n}" for n in class_names] if decided is not None else [])])
        for i, (truth, row) in enumerate(zip(labels, probs)):
            cells = [*first(i), *[int(v) for v in truth], *[repr(float(p)) for p in row]]
            writer.writerow(cells + ([int(v) for v in decided[i]] if decided is not None else []))
        return out.getvalue()
    header = [*head, "true_label", "predicted_label", *[f"prob_{name}" for name in class_names]]
    writer.writerow(header + (["operating_point_label"] if decided is not None else []))
    for i, (label, row) in enumerate(zip(labels, probs)):
        # repr keeps every digit: paired statistics and the report recompute metrics from these.
        cells = [*first(i), class_names[int(label)], class_names[int(row.argmax())], *[repr(float(p)) for p in row]]
        writer.writerow(cells + ([class_names[int(decided[i])]] if decided is not None else []))
    return out.getvalue()


def write_predictions(path: Path, probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                      decided: np.ndarray | None = None, sources: Sequence[str] | None = None) -> Path:
    write_atomic(path, predictions_csv(probs, labels, class_names, decided, sources))
    return path


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(image_ids, labels as class indices, probabilities N x K, class names) from a predictions CSV
    (multi-label files: labels N x K multi-hot)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    prob_cols = [i for i, name in enumerate(header) if name.startswith("prob_")]
    class_names = [header[i][len("prob_"):] for i in prob_cols]
    if f"true_{class_names[0]}" in header if class_names else False:
        true_cols = [header.index(f"true_{n}") for n in class_names]
        ids = np.array([int(r[header.index("image_id")]) for r in body], dtype=np.int64)
        labels = np.array([[int(r[i]) for i in true_cols] for r in body], dtype=np.uint8).reshape(len(body), len(true_cols))
        probs = np.array([[float(r[i]) for i in prob_cols] for r in body], dtype=np.float64).reshape(len(body), len(prob_cols))
        return ids, labels, probs, class_names
    index = {name: i for i, name in enumerate(class_names)}
    ids = np.array([int(r[header.index("image_id")]) for r in body], dtype=np.int64)
    labels = np.array([index[r[header.index("true_label")]] for r in body], dtype=np.int64)
    probs = np.array([[float(r[i]) for i in prob_cols] for r in body], dtype=np.float64).reshape(len(body), len(prob_cols))
    return ids, labels, probs, class_names
