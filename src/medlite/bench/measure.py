"""The timing loop, its statistics and the optional machine sensors (temperature, RAPL energy).

Standard library, plus psutil for the temperature sensors when it is installed: the ONNX worker
runs on edge devices under the same import rule as `medlite.edge` (psutil is in the `edge`
extra), and the PyTorch worker must time eager models with exactly the same loop.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RAPL_DIR = Path("/sys/class/powercap/intel-rapl:0")
# Sensors that measure the CPU itself (psutil's names: the hwmon driver, or the thermal zone type
# on ARM SoCs such as the Raspberry Pi).
CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "x86_pkg_temp", "cpu_thermal", "cpu-thermal", "soc_thermal", "cpu")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), on an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, float | int]:
    """p50/p90/p99/mean/std (population)/min/max of per-run latencies, rounded to 1 µs."""
    values = sorted(samples_ms)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    out = {f"p{q}": round(percentile(values, q), 4) for q in (50, 90, 99)}
    out.update(mean=round(mean, 4), std=round(std, 4), min=round(values[0], 4), max=round(values[-1], 4))
    out["runs"] = len(values)
    return out


# -- sensors ------------------------------------------------------------------------------------


def read_temperature() -> tuple[float | None, str | None]:
    """CPU temperature in °C and None, or None and why not (psutil's sensors: hwmon, then thermal zones).

    The hottest CPU sensor; the hottest sensor of any kind when none is known to be the CPU's.
    """
    try:
        import psutil
    except ImportError:
        return None, "psutil is not installed (pip install psutil), so no temperature sensor is read"
    try:
        sensors = psutil.sensors_temperatures()
    except AttributeError:  # psutil has no temperature sensors on macOS and Windows
        return None, f"psutil reads no temperature sensors on {sys.platform}"
    except OSError as err:
        return None, f"psutil cannot read the temperature sensors ({type(err).__name__}: {err})"
    cpu = [e.current for name, entries in sensors.items() if name.lower() in CPU_SENSORS for e in entries if e.current]
    every = [e.current for entries in sensors.values() for e in entries if e.current]
    if cpu or every:
        return round(max(cpu or every), 1), None
    return None, "no temperature sensor readable (psutil found none in /sys/class/hwmon or /sys/class/thermal)"


class EnergyMeter:
    """Intel RAPL package energy counter (also exposed for AMD Zen by recent Linux kernels).

    It measures the whole CPU package, every process included, so it is only meaningful on an
    otherwise idle machine; `scope` says so in the results.
    """

    scope = "cpu package (RAPL intel-rapl:0, whole socket, all processes)"

    def __init__(self, root: Path = RAPL_DIR) -> None:
        self.path = root / "energy_uj"
        self.max_path = root / "max_energy_range_uj"
        self.unavailable: str | None = None
        if not self.path.exists():
            self.unavailable = f"no RAPL energy counter ({self.path} absent: not an Intel/AMD Linux host or no powercap)"
        else:
            try:
                self._read()
            except PermissionError:
                self.unavailable = f"permission denied reading {self.path} (root only since Linux 5.10)"
            except (OSError, ValueError) as err:
                self.unavailable = f"cannot read {self.path} ({type(err).__name__})"

    def _read(self) -> int:
        return int(self.path.read_text().strip())

    def start(self) -> int | None:
        return None if self.unavailable else self._read()

    def joules_since(self, start: int | None) -> float | None:
        """Energy since `start`, handling one counter wrap-around."""
        if start is None or self.unavailable:
            return None
        end = self._read()
        if end < start:
            try:
                end += int(self.max_path.read_text().strip())
            except (OSError, ValueError):
                return None
        return (end - start) / 1e6


# -- loops ------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    samples_ms: list[float]
    wall_s: float
    cpu_s: float
    stopped_by: str  # "iterations" or "time_budget"
    energy_j: float | None


def timed_loop(fn: Callable[[], object], warmup: int, iterations: int, time_budget_s: float,
               energy: EnergyMeter | None = None) -> LoopResult:
    """Run `fn` `warmup` times untimed, then time each call until `iterations` runs or the budget is spent.

    At least one timed run always happens, so a slow model still gets a figure. CPU time is the
    whole process's (all threads), so CPU time / wall time shows how many cores the runtime kept busy.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    energy_start = energy.start() if energy else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + time_budget_s
    stopped_by = "iterations"
    while len(samples) < iterations:
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / 1e6)
        if time.perf_counter() >= deadline and len(samples) < iterations:
            stopped_by = "time_budget"
            break
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    joules = energy.joules_since(energy_start) if energy else None
    return LoopResult(samples, wall, cpu, stopped_by, joules)


def throughput(fn_batch: Callable[[], object], batch: int, max_batches: int, time_budget_s: float) -> dict:
    """Images per second when feeding `batch` images per call: one warm-up call, then up to
    `max_batches` timed calls within the budget (at least one)."""
    fn_batch()
    done = 0
    start = time.perf_counter()
    deadline = start + time_budget_s
    while done < max_batches:
        fn_batch()
        done += 1
        if time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - start
    return {"throughput_ips": round(batch * done / wall, 2), "throughput_batch": batch, "throughput_batches": done}


def median_ms(fn: Callable[[], object], repeats: int, time_budget_s: float = 1.0) -> tuple[float, float]:
    """(first call ms, median ms over up to `repeats` calls within the budget): cold and warm cost."""
    times: list[float] = []
    deadline = time.perf_counter() + time_budget_s
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if time.perf_counter() >= deadline:
            break
    return round(times[0], 4), round(percentile(sorted(times), 50), 4)


def load_average() -> float | None:
    """1-minute system load (runnable processes), or None where the OS does not report it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
