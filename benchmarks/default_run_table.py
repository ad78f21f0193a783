"""The README's "What the default recipe measures" table, generated from a run's results.json.

    make run                                                     # runs/breastmnist
    .venv/bin/python benchmarks/default_run_table.py runs/breastmnist benchmarks/results/default_run_2cores \
        --command "make run" [--compare OTHER_RUN_DIR --compare-label "before the redesign"]

Writes `<stem>.json` (the figures, the command, the machine and the date) and `<stem>.md` (the
table the README shows). With `--compare`, the AUC of every variant both runs made is listed side
by side, with the difference (the redesign's check that the pipeline still computes the same thing).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from medlite.bench.runner import machine_info
from medlite.runstate import read_json, write_atomic, write_json


def _kb(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024 / 1024:.2f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def _count(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K")


def figures(results: dict) -> list[dict]:
    rows = []
    for v in results["variants"]:
        m = v.get("metrics") or {}
        op = (m.get("operating_point") or {}).get("test") or {}
        bench = v.get("bench") or {}
        reference = (bench.get("reference") or {}).get("latency_ms") or {}
        rows.append({
            "name": v["name"], "arch": v["arch"], "parent": v.get("parent"), "params": v.get("params"), "macs": v.get("macs"),
            "file_bytes": v.get("file_bytes"), "auc": m.get("auc"), "auc_ci": (m.get("ci") or {}).get("auc"),
            "val_auc": (v.get("val_metrics") or {}).get("auc"),
            "sensitivity": op.get("sensitivity"), "specificity": op.get("specificity"),
            "p50_ms": (bench.get("latency_ms") or {}).get("p50"), "eager_p50_ms": reference.get("p50"),
            "training": v.get("training") or {}, "warnings": v.get("warnings") or [],
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | params | MACs | file | AUC (95% CI) | val AUC | sens. / spec. at the operating point | p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["auc_ci"]
        auc = f"{r['auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{r['auc']:.3f}"
        name = r["name"]
        if r["training"].get("views"):
            name += f" (`{r['arch']}`, {r['training']['views']} views)"
        latency = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        if r["eager_p50_ms"] is not None:
            latency += f" (PyTorch eager: {r['eager_p50_ms']:.2f})"
        sens = "-" if r["sensitivity"] is None else f"{r['sensitivity']:.2f} / {r['specificity']:.2f}"
        val = "-" if r["val_auc"] is None else f"{r['val_auc']:.3f}"
        lines.append(f"| {name} | {_count(r['params'])} | {_count(r['macs'])} | {_kb(r['file_bytes'])} | {auc} | {val} | "
                     f"{sens} | {latency} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("stem", type=Path, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--command", required=True, help="the command that made the run (recorded)")
    parser.add_argument("--compare", type=Path, help="another run directory of the same recipe")
    parser.add_argument("--compare-label", default="the other run")
    args = parser.parse_args()
    results = read_json(args.run_dir / "results.json")
    rows = figures(results)
    doc = {
        "command": args.command, "machine": machine_info(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "recipe": results["recipe"], "seed": results["seed"],
        "medlite": results.get("medlite"), "timings": results["timings"], "dataset_warnings":
        (results.get("dataset") or {}).get("warnings") or [], "variants": rows,
    }
    md = [f"`{args.command}` on {doc['machine'].get('cpu')} ({doc['machine'].get('cores')} cores), {doc['date']}, "
          f"medlite {doc['medlite']}: recipe `{doc['recipe']}`, seed {doc['seed']}, {results['timings']['total']:.0f} s "
          "of pipeline. Figures measured on the exported files in their runtime (test split); latency: "
          "batch-1 p50, 1 thread, a fresh process per file.", "", table(rows), ""]
    md += [f"- data: {w}" for w in doc["dataset_warnings"]]
    if args.compare:
        other = {v["name"]: v for v in read_json(args.compare / "results.json")["variants"]}
        # The label names the other run (a commit, a setting); its folder is this machine's, not the reader's.
        doc["compare"] = {"label": args.compare_label, "variants": {}}
        md += ["", f"AUC against {args.compare_label}:", "",
               "| variant | this run | " + args.compare_label + " | difference |", "|---|---|---|---|"]
        for r in rows:
            before = ((other.get(r["name"]) or {}).get("metrics") or {}).get("auc")
            if before is None:
                continue
            difference = round(r["auc"] - before, 9) + 0.0  # float noise below 1e-9 is no difference (and no -0)
            doc["compare"]["variants"][r["name"]] = {"this": r["auc"], "other": before, "difference": difference}
            md.append(f"| {r['name']} | {r['auc']:.6f} | {before:.6f} | {difference:+.6f} |")
    write_json(args.stem.with_suffix(".json"), doc)
    write_atomic(args.stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
