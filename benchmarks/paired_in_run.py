"""Paired bootstrap of AUC differences between variants of one run, over its test images.

    .venv/bin/python benchmarks/paired_in_run.py RUN_DIR OUT.json A:B [A:B ...]

Reads `predictions/<variant>.csv` (the deployed files' probabilities on the test split) and compares
each pair with `medlite.study.stats.paired_auc_difference` (scipy's bootstrap, 2000 resamples, the
same images drawn for both): difference of macro AUC, its 95% interval, and p. One run is one seed:
this measures the test images' noise, not the seeds'.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np

from medlite.study.stats import paired_auc_difference


def load(run: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    with open(f"{run}/predictions/{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k[5:] for k in rows[0] if k.startswith("prob_")]
    y = np.array([classes.index(r["true_label"]) for r in rows])
    p = np.array([[float(r["prob_" + c]) for c in classes] for r in rows])
    return y, p


def main() -> None:
    run, out_path, *pairs = sys.argv[1:]
    out = {}
    for pair in pairs:
        a, b = pair.split(":")
        (ya, pa), (yb, pb) = load(run, a), load(run, b)
        if not np.array_equal(ya, yb):
            raise SystemExit(f"{a} and {b} were not scored on the same test images")
        r = paired_auc_difference([{"group": 0, "labels": ya, "a": pa, "b": pb}], resamples=2000, seed=0)
        out[f"{a} - {b}"] = {"delta_auc": round(r["delta_auc"], 4), "ci": [round(c, 4) for c in r["ci"]],
                             "p": round(r["p"], 4), "n_images": int(len(ya))}
        print(f"{a} - {b}: {out[f'{a} - {b}']}")
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
