"""fp16 beside fp32 and int8 (issue 19): the README's table and per-layer excerpt, from a run and
`medlite bench FILE --layers --json` of each of the student's files.

    medlite run breastmnist --out RUN --set compress.methods=[int8_static,fp16] \
        --set export.formats=[onnx,litert] --set export.litert.quantize=[fp32,int8_static,fp16] ...
    for f in RUN/models/student_kd*.onnx RUN/models/student_kd_tflite_*.tflite; do
        medlite bench $f --layers --threads 1 --json BENCH/$(basename $f).json; done
    python benchmarks/fp16_table.py RUN BENCH benchmarks/results/fp16_breastmnist_2cores \
        --command "..." --machine "2-core VM, shared"

Writes `<stem>.json` (figures, command, machine, date) and `<stem>.md` (the tables the README shows).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medlite.bench.layers import layer_lines
from medlite.bench.runner import machine_info
from medlite.evaluate.predictions import read_predictions
from medlite.runstate import read_json, write_atomic, write_json

ORDER = ["student_kd", "student_kd_int8_static", "student_kd_fp16",
         "student_kd_tflite_fp32", "student_kd_tflite_int8_static", "student_kd_tflite_fp16"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("bench", type=Path, help="folder of `medlite bench FILE --layers --json` outputs")
    parser.add_argument("stem", type=Path)
    parser.add_argument("--command", required=True)
    parser.add_argument("--machine", required=True)
    args = parser.parse_args()
    results = read_json(args.run / "results.json")
    variants = {v["name"]: v for v in results["variants"]}
    rows = []
    for name in ORDER:
        v = variants.get(name)
        if v is None:
            continue
        bench_path = args.bench / f"{Path(v['file']).name}.json"
        bench = json.loads(bench_path.read_text()) if bench_path.is_file() else {}
        reference = variants["student_kd" if v["runtime"] == "onnxruntime" else "student_kd_tflite_fp32"]
        probs = read_predictions(args.run / v["metrics"]["predictions"])[2]
        ref_probs = read_predictions(args.run / reference["metrics"]["predictions"])[2]
        layers = bench.get("layers") or {}
        rows.append({
            "variant": name, "format": v["format"], "runtime": v["runtime"], "file_bytes": v["file_bytes"],
            "size_vs_fp32": round(v["file_bytes"] / reference["file_bytes"], 3),
            "auc": v["metrics"]["auc"], "max_abs_prob_diff_vs_fp32": float(np.abs(probs - ref_probs).max()),
            "p50_ms": (bench.get("latency_ms") or {}).get("p50"), "p90_ms": (bench.get("latency_ms") or {}).get("p90"),
            "throughput_ips": bench.get("throughput_ips"), "threads": bench.get("threads"),
            "system_load_1m": (bench.get("threads_1") or {}).get("system_load_1m"),
            "int8_layers": (layers.get("totals") or {}).get("int8_layers"),
            "float_layers": (layers.get("totals") or {}).get("float_layers"),
            "layer_view": layer_lines(layers) if layers else None,
        })
    doc = {"command": args.command, "machine": args.machine, "machine_info": machine_info(),
           "date": time.strftime("%Y-%m-%d"), "run_seconds": results.get("seconds"), "rows": rows}
    write_json(args.stem.with_suffix(".json"), doc)
    lines = [f"Measured {doc['date']} on a {args.machine} ({doc['machine_info'].get('cpu') or doc['machine_info'].get('platform')}).",
             "", "Command:", "", "```", args.command, "```", "",
             "| variant | format | file | vs fp32 | AUC | max abs prob diff vs fp32 | p50 ms (1 thread) | img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['format']} | {r['file_bytes'] / 1024:.0f} KB | {r['size_vs_fp32']:.2f} | "
                     f"{r['auc']:.3f} | {r['max_abs_prob_diff_vs_fp32']:.4f} | "
                     f"{'-' if r['p50_ms'] is None else format(r['p50_ms'], '.3f')} | "
                     f"{'-' if r['throughput_ips'] is None else format(r['throughput_ips'], '.0f')} |")
    loads = [r["system_load_1m"] for r in rows if r["system_load_1m"] is not None]
    if loads:
        lines += ["", f"1-minute load while measuring: {min(loads):.1f}-{max(loads):.1f} on "
                      f"{doc['machine_info'].get('cores')} cores (a shared machine: sub-millisecond latencies vary by "
                      "about ±30% between runs). The AUCs are of a 5-epoch run (the default trains 40 + 30 epochs): "
                      "compare files, not the AUC with the default's."]
    for r in rows:
        if r["layer_view"]:
            lines += ["", f"`medlite bench {r['variant']} --layers`:", "", "```", *r["layer_view"], "```"]
    write_atomic(args.stem.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
