"""A 12-trial study on a two-node Ray cluster on 127.0.0.1 against the local executor: wall time and
whether the tables are identical.

    python benchmarks/ray_vs_local.py --data-root DIR [--out benchmarks/results/ray_vs_local_2cores.md]

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
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from raycluster import RayCluster

    from medlite.study.runner import run_study

    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="mlbench"))
    study = work / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "ray_vs_local", "recipe": "breastmnist", "set": TINY,
                                     "grid": {"distill.alpha": [0.3, 0.5, 0.7]}, "seeds": [0, 1, 2, 3]}))
    data_root = Path(args.data_root)
    quiet = lambda _: None  # noqa: E731
    local = run_study(study, work / "local", data_root, workers=cores, say=quiet)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MEDLITE_DATA_ROOT": str(data_root), "RAY_USAGE_STATS_ENABLED": "0"}
    short = Path(tempfile.mkdtemp(prefix="mlray", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    cluster = RayCluster(short, env, nodes=2, cpus=max(1, cores // 2))
    try:
        t = time.perf_counter()
        cluster.start()
        cluster_start = time.perf_counter() - t
        remote = run_study(study, work / "ray", data_root, executor="ray", address=cluster.address, say=quiet)
    finally:
        cluster.stop()
        shutil.rmtree(short, ignore_errors=True)
    strip = lambda doc: [{k: e[k] for k in e if k != "latency_ms"} for e in doc["summary"]]  # noqa: E731
    identical = strip(local) == strip(remote)
    rows_same = [{k: r[k] for k in r if k != "latency_ms"} for r in local["rows"]] == \
        [{k: r[k] for k in r if k != "latency_ms"} for r in remote["rows"]]
    nodes = sorted({json.loads(p.read_text())["ray_node"] for p in (work / "ray" / "trials").glob("*/trial.json")})
    ray_info = remote["invocations"][-1].get("ray", {})
    lines = ["# A 12-trial study: two-node Ray cluster on 127.0.0.1 vs the local executor", "",
             "- command: `python benchmarks/ray_vs_local.py`",
             f"- machine: {args.machine} ({cores} cores, {platform.machine()})",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "- study: distill.alpha {0.3, 0.5, 0.7} x seeds 0-3, tiny trials (40 images, medlite_cnn_tiny, 1 epoch)", "",
             "| executor | parallel trials | wall s (study) | trials | failed |", "|---|---|---|---|---|",
             f"| local | {cores} workers | {local['wall_seconds']} | {local['trials_finished']} | {len(local['failed'])} |",
             f"| ray, 2 nodes x {max(1, cores // 2)} CPU | {2 * max(1, cores // 2)} tasks | {remote['wall_seconds']} | "
             f"{remote['trials_finished']} | {len(remote['failed'])} |", "",
             f"- cluster start (two `ray start`, not in the study's wall time): {cluster_start:.1f} s",
             f"- trials ran on {len(nodes)} node(s); retried: {len(ray_info.get('retried', []))}",
             f"- summary table identical (every metric but latency): **{identical}**; every per-trial row identical: **{rows_same}**",
             ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
