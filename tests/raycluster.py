"""A real two-node Ray cluster on 127.0.0.1 for tests; torn down by process id (only the processes
this helper started: the Ray processes that appeared during its `ray start` calls, and their children).
One node can be killed alone (`kill_node`): a machine that died mid-study."""

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
        self.node_pids: list[set[int]] = []  # per node: the processes its `ray start` left running
        self.pids: set[int] = set()
        self._start()
        return self

    def _ray_node(self, *args: str) -> None:
        before = _pids()
        try:
            self._ray(*args)
        finally:
            # Ours: Ray processes that appeared while we started this node (not this test process).
            new = {p for p in _pids() - before if "ray" in _cmdline(p)} - {os.getpid()} - self.pids
            self.node_pids.append(new)
            self.pids |= new

    def _start(self) -> None:
        # Every server on 127.0.0.1 only.
        self._ray_node("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                       "--num-cpus", str(self.cpus), "--include-dashboard=false", "--temp-dir", str(self.temp_dir),
                       "--disable-usage-stats")
        for _ in range(self.nodes - 1):
            self._ray_node("start", "--address", self.address, "--node-ip-address", "127.0.0.1",
                           "--num-cpus", str(self.cpus), "--disable-usage-stats")

    def node_of(self, pid: int) -> int | None:
        """The node (index) whose processes include `pid` (a task's worker is its raylet's child)."""
        for i, roots in enumerate(self.node_pids):
            if pid in _tree(roots):
                return i
        return None

    def kill_node(self, index: int) -> None:
        """SIGKILL one node's processes (raylet, its workers): a machine that died."""
        for pid in sorted(_tree(self.node_pids[index]) & _pids() - {os.getpid()}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
