"""Bounded local load test for `medlite serve`: N concurrent clients on 127.0.0.1 only.

    PYTHONPATH=src python benchmarks/serve_load.py MODEL_OR_RUN_DIR IMAGE_FOLDER [--clients 8] [--requests 25]

Starts `medlite serve` in a subprocess on a free loopback port, waits for /health, then each
client thread posts images (one per request, cycled) to /predict; prints p50/p99 latency,
throughput and the error count as JSON. Refuses any host but 127.0.0.1: it is a load test of
our own server, never of someone else's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def run_load(base_url: str, payloads: list[bytes], clients: int = 8, requests_per_client: int = 25,
             heatmap: bool = False) -> dict:
    """Fire clients x requests POST /predict at a server on 127.0.0.1; latency percentiles and errors."""
    import httpx

    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError(f"{base_url}: the load test only targets 127.0.0.1")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            for i in range(requests_per_client):
                data = payloads[(k * requests_per_client + i) % len(payloads)]
                t0 = time.perf_counter()
                try:
                    res = http.post("/predict", params={"heatmap": int(heatmap)},
                                    files={"file": (f"img{i}.png", data, "image/png")})
                    ok = res.status_code == 200 and res.json()["results"]
                    err = None if ok else f"HTTP {res.status_code}: {res.text[:100]}"
                except httpx.HTTPError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(ms)
                    if err:
                        errors.append(err)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies)
    return {
        "clients": clients, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2), "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2), "heatmap": heatmap,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--heatmap", action="store_true", help="ask for occlusion maps too (much slower)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    payloads = [p.read_bytes() for p in sorted(args.images.rglob("*.png"))[:64]]
    if not payloads:
        print(f"no .png images under {args.images}", file=sys.stderr)
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "medlite.cli", "serve", str(args.model), "--port", str(port),
                               "--threads", str(args.threads)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                print(f"server did not start: {server.stderr.read().decode()[-500:]}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        stats = run_load(url, payloads, args.clients, args.requests, args.heatmap)
        stats["health_after"] = httpx.get(url + "/health", timeout=5).json()["status"]
        print(json.dumps(stats, indent=1))
        return 0 if stats["errors"] == 0 else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
