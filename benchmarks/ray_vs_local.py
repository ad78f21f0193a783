"""A 12-trial study on a two-node Ray cluster on 127.0.0.1 against the local executor: wall time and
whether the tables are identical.

    python benchmarks/ray_vs_local.py --data-root DIR [--rounds 2] [--out benchmarks/results/ray_vs_local_2cores.md]

The study: distill.alpha in {0.3, 0.5, 0.7} x seeds 0-3 (12 trials, 4 teachers shared through the
stage store), tiny trials (40 images, medlite_cnn_tiny, 1 epoch each, no compression, no bench).
Local: `--workers` = the cores, one torch thread per trial. Ray: two nodes started with
`ray start --node-ip-address 127.0.0.1`, each with half the cores as CPUs, one CPU (and one torch
thread) per trial: the same parallelism. The cluster is started before the timed study and torn
down after (by process id: tests/raycluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data.limit": 40, "teacher.arch": "medlite_cnn_tiny", "teacher.epochs": 1, "student.arch": "medlite_cnn_tiny",
        "student.epochs": 1, "compress.methods": [], "bench.enabled": False, "evaluate.bootstrap": 0,
        "distill.scratch_baseline": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("MEDLITE_DATA_ROOT"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_vs_local_2cores.md"))
    parser.add_argument("--machine", default="2-core VM, shared")
    parser.add_argument("--rounds", type=int, default=2, help="local/Ray pairs, the order alternating")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from raycluster import RayCluster

    from medlite.study.runner import run_study

    cores = len(os.sched_getaffinity(0))
    data_root = Path(args.data_root)
    quiet = lambda _: None  # noqa: E731
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MEDLITE_DATA_ROOT": str(data_root), "RAY_USAGE_STATS_ENABLED": "0"}
    strip = lambda rows: [{k: r[k] for k in r if k != "latency_ms"} for r in rows]  # noqa: E731
    rounds, reference = [], None
    for n in range(args.rounds):
        # The machine is shared: the order alternates, so a busy spell does not always hit one executor.
        order = ("local", "ray") if n % 2 == 0 else ("ray", "local")
        work = Path(tempfile.mkdtemp(prefix="mlbench"))
        study = work / "study.yaml"
        study.write_text(yaml.safe_dump({"name": "ray_vs_local", "recipe": "breastmnist", "set": TINY,
                                         "grid": {"distill.alpha": [0.3, 0.5, 0.7]}, "seeds": [0, 1, 2, 3]}))
        docs, facts = {}, {}
        for executor in order:
            if executor == "local":
                docs["local"] = run_study(study, work / "local", data_root, workers=cores, say=quiet)
                continue
            short = Path(tempfile.mkdtemp(prefix="mlray", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
            cluster = RayCluster(short, env, nodes=2, cpus=max(1, cores // 2))
            try:
                t = time.perf_counter()
                cluster.start()
                facts["cluster_start_s"] = round(time.perf_counter() - t, 1)
                docs["ray"] = run_study(study, work / "ray", data_root, executor="ray", address=cluster.address, say=quiet)
            finally:
                cluster.stop()
                shutil.rmtree(short, ignore_errors=True)
            facts["nodes_used"] = len({json.loads(p.read_text())["ray_node"] for p in (work / "ray" / "trials").glob("*/trial.json")})
            facts["retried"] = len(docs["ray"]["invocations"][-1].get("ray", {}).get("retried", []))
        reference = reference or strip(docs["local"]["summary"])
        rounds.append({"order": " then ".join(order), "local_s": docs["local"]["wall_seconds"], "ray_s": docs["ray"]["wall_seconds"],
                       "trials": (docs["local"]["trials_finished"], docs["ray"]["trials_finished"]),
                       "failed": len(docs["local"]["failed"]) + len(docs["ray"]["failed"]),
                       "summary_identical": strip(docs["local"]["summary"]) == strip(docs["ray"]["summary"]) == reference,
                       "rows_identical": strip(docs["local"]["rows"]) == strip(docs["ray"]["rows"]), **facts})
        shutil.rmtree(work, ignore_errors=True)
    lines = ["# A 12-trial study: two-node Ray cluster on 127.0.0.1 vs the local executor", "",
             f"- command: `python benchmarks/ray_vs_local.py --rounds {args.rounds}`",
             f"- machine: {args.machine} ({cores} cores, {platform.machine()}); other jobs were running: times vary",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "- study: distill.alpha {0.3, 0.5, 0.7} x seeds 0-3 (12 trials, 4 shared teachers), tiny trials "
             "(40 images, medlite_cnn_tiny, 1 epoch, no compression, no bench)",
             f"- local: {cores} worker processes, 1 torch thread per trial; Ray: 2 nodes x {max(1, cores // 2)} CPU, "
             "1 CPU and 1 thread per trial (the same parallelism); the cluster start is not in the study's wall time", "",
             "| round | order | local s | Ray s | Ray cluster start s | trials (local, Ray) | failed | nodes used | "
             "summary identical | every row identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        lines.append(f"| {i} | {r['order']} | {r['local_s']} | {r['ray_s']} | {r.get('cluster_start_s')} | {r['trials']} | "
                     f"{r['failed']} | {r.get('nodes_used')} | {r['summary_identical']} | {r['rows_identical']} |")
    lines += ["", "Identical: every metric of the summary table and of every per-trial row but latency (no bench here), "
              "compared with `==` on the floats; across rounds too.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
