"""A real two-node Ray cluster on 127.0.0.1 for tests; torn down by process id (only the processes
this helper started: those whose command line names its private temp dir, and their children)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _pids() -> set[int]:
    return {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()}


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _tree(roots: set[int]) -> set[int]:
    seen, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(_children(pid))
    return seen


class RayCluster:
    def __init__(self, temp_dir: Path, env: dict[str, str], nodes: int = 2, cpus: int = 1) -> None:
        self.temp_dir, self.env, self.nodes, self.cpus = temp_dir, env, nodes, cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _ray(self, *args: str) -> None:
        ray = Path(sys.executable).with_name("ray")
        proc = subprocess.run([str(ray), *args], env=self.env, capture_output=True, text=True, timeout=180)
        if proc.returncode:
            raise RuntimeError(f"ray {args[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")

    def start(self) -> "RayCluster":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        before = _pids()
        try:
            self._start()
        finally:
            # Ours: Ray processes that appeared while we started the cluster (not this test process).
            self.pids = {p for p in _pids() - before if "ray" in _cmdline(p)} - {os.getpid()}
        return self

    def _start(self) -> None:
        self._ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                  "--num-cpus", str(self.cpus), "--include-dashboard=false", "--temp-dir", str(self.temp_dir),
                  "--disable-usage-stats")
        for _ in range(self.nodes - 1):
            self._ray("start", "--address", self.address, "--node-ip-address", "127.0.0.1",
                      "--num-cpus", str(self.cpus), "--disable-usage-stats")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = sorted(_tree(self.pids) & _pids() - {os.getpid()})
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if not pids:
                return
            time.sleep(2)
