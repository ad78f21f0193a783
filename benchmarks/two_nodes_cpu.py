"""Several nodes on CPU: `medlite run` as one process, as 2 forked ranks on one machine, and as 2 "nodes"
of one rank each started the way torchrun starts its workers (static rendezvous on 127.0.0.1).

    python benchmarks/two_nodes_cpu.py --data-root DIR [--epochs 8] [--out benchmarks/results/two_nodes_cpu_2cores.md]

The default recipe (BreastMNIST) with its teacher and students trained for `--epochs` (the recipe: 40
and 30), no compression, benchmark or explanations: the three training stages are what differs. Each
run is a fresh `medlite run` process (each node too); 1 torch thread per process in every mode, so the
2-process modes use both cores. The two-node figures must equal the forked ones (same world, shards and
random streams); the table says whether they do. On one machine the "nodes" share its cores and
loopback: the wall times show the protocol's cost, not what two machines would gain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(data_root: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env.update(PYTHONPATH=str(REPO / "src"), MEDLITE_DATA_ROOT=data_root, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, args, out: Path) -> dict:
    sets = [f"teacher.epochs={args.epochs}", f"student.epochs={args.epochs}", "compress.methods=[]",
            "bench.enabled=false", "explain.enabled=false"]
    if mode == "fork2":
        sets += ["trainer.devices=2", "trainer.strategy=ddp"]
    argv = [sys.executable, "-m", "medlite.cli", "run", "breastmnist", "--out", str(out)]
    argv += [arg for item in sets for arg in ("--set", item)]
    env = _env(args.data_root)
    start = time.perf_counter()
    if mode == "nodes2":
        port = _port()
        procs = [subprocess.Popen(argv, env={**env, "RANK": str(r), "GROUP_RANK": str(r), "LOCAL_RANK": "0",
                                             "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                                             "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "bench"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
        outputs = [p.communicate()[0] for p in procs]
        codes = [p.returncode for p in procs]
    else:
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        outputs, codes = [done.stdout + done.stderr], [done.returncode]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"{mode}: exit {codes}\n" + "\n".join(o[-3000:] for o in outputs))
    results = json.loads((out / "results.json").read_text())
    variants = {v["name"]: v for v in results["variants"]}
    row = {"mode": mode, "wall_s": round(wall, 1)}
    for name in ("teacher", "student_scratch", "student_kd"):
        v = variants[name]
        row[name] = {"train_s": v["train"]["seconds"], "best_val_auc": v["train"]["best_val_auc"],
                     "test_auc": v["metrics"]["auc"], "processes": v["train"].get("processes")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("MEDLITE_DATA_ROOT"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/two_nodes_cpu_2cores.md"))
    parser.add_argument("--machine", default="2-core VM, shared")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(mode, args, Path(tmp) / mode) for mode in ("single", "fork2", "nodes2")]
    fork, nodes = rows[1], rows[2]
    same = all(fork[n]["best_val_auc"] == nodes[n]["best_val_auc"] and fork[n]["test_auc"] == nodes[n]["test_auc"]
               for n in ("teacher", "student_scratch", "student_kd"))
    cores = len(os.sched_getaffinity(0))
    lines = ["# Several nodes on CPU: one process, 2 forked ranks, 2 loopback nodes", "",
             f"- command: `python benchmarks/two_nodes_cpu.py --epochs {args.epochs}`",
             f"- machine: {args.machine} ({cores} cores, {platform.processor() or platform.machine()})",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- recipe: breastmnist, teacher and students {args.epochs} epochs, no compression/bench/explain; "
             "1 torch thread per process; AUCs measured on the exported ONNX files (test split)",
             f"- two nodes give the forked ranks' numbers exactly: {'yes' if same else 'NO'}", "",
             "| mode | wall s (whole run) | teacher train s | teacher val AUC | teacher test AUC | KD student val AUC | KD student test AUC | scratch test AUC |",
             "|---|---|---|---|---|---|---|---|"]
    label = {"single": "1 process", "fork2": "2 forked ranks (trainer.devices=2)", "nodes2": "2 nodes x 1 rank (torchrun env)"}
    for r in rows:
        t, kd, sc = r["teacher"], r["student_kd"], r["student_scratch"]
        lines.append(f"| {label[r['mode']]} | {r['wall_s']} | {t['train_s']} | {t['best_val_auc']:.4f} | {t['test_auc']:.4f} | "
                     f"{kd['best_val_auc']:.4f} | {kd['test_auc']:.4f} | {sc['test_auc']:.4f} |")
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
