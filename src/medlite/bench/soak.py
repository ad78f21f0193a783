"""Sustained inference with a resource monitor (the resource studies' `sys_mon`).

`soak(model, seconds)` runs batch-1 inference on the deployed file in a loop for `seconds` while a
sampler records, once a second: this process's CPU % (of one core; 200 = two cores busy), the
whole machine's CPU %, resident memory (all three from psutil), the device's telemetry
(`medlite.bench.telemetry`: temperature from vcgencmd, thermal zones or psutil's sensors; the Pi's
throttling flags; power from a Pi 5's PMIC or RAPL, and the energy per inference it implies; None
with the reason where the device has no such sensor) and inferences completed in that second.
Rows go to a CSV and a PNG plot, so thermal throttling shows up as falling inferences/s under
rising temperature. numpy + psutil (+ matplotlib for the plot, skipped with a note when missing).
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from medlite.bench.measure import read_temperature
from medlite.bench.telemetry import Telemetry
from medlite.runstate import atomic_path
from medlite.runtime import open_artifact
from medlite.runtime.host import MB

FIELDS = ("t_s", "inferences", "inferences_per_s", "process_cpu_pct", "system_cpu_pct", "rss_mb", "temperature_c",
          "power_w", "energy_mj_per_inference", "throttled")


def soak(model: Path, seconds: float, *, runtime: str | None = None, threads: int = 0, interval: float = 1.0,
         telemetry: Telemetry | None = None) -> dict:
    """Run the model for `seconds`; returns {"rows": [...], "summary": {...}} (one row per interval).
    `telemetry` reads the device's sensors (default: this machine's)."""
    telemetry = telemetry or Telemetry()
    if seconds <= 0:
        raise ValueError(f"--soak {seconds}: must be positive")
    art = open_artifact(model, runtime=runtime, threads=threads)
    spec = art.require_spec()
    x = np.random.default_rng(0).standard_normal((1, spec.channels, spec.image_size, spec.image_size)).astype(np.float32)
    art.run(x)  # warm-up
    count = {"n": 0}
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            art.run(x)
            count["n"] += 1

    worker = threading.Thread(target=work, daemon=True)
    rows: list[dict] = []
    temp_reason = None
    missing: dict[str, str] = {}
    telemetry.power()  # a rate (RAPL) needs a reading before the first row
    process = psutil.Process()
    # psutil's CPU percentages are "since the previous call": prime both, then one call per row.
    process.cpu_percent(None)
    psutil.cpu_percent(None)
    start = time.perf_counter()
    last_t, last_n = start, 0
    worker.start()
    try:
        while True:
            elapsed = time.perf_counter() - start
            wait = min(interval * (len(rows) + 1), seconds) - elapsed
            if wait > 0:
                time.sleep(wait)
            now, n = time.perf_counter(), count["n"]
            process_pct, system_pct = process.cpu_percent(None), psutil.cpu_percent(None)
            dt = now - last_t
            sample = telemetry.read()
            temp = sample["temperature_c"]
            if temp is None:  # psutil's sensors (hwmon too) where the device's own sources have none
                temp, reason = read_temperature()
                temp_reason = temp_reason or reason
            for key, why in sample["unavailable"].items():
                missing.setdefault(key, why)
            rate = round((n - last_n) / dt, 2) if dt > 0 else None
            power = sample["power_w"]
            rows.append({
                "t_s": round(now - start, 3), "inferences": n - last_n, "inferences_per_s": rate,
                "process_cpu_pct": round(process_pct, 1), "system_cpu_pct": round(system_pct, 1),
                "rss_mb": round(process.memory_info().rss / MB, 2), "temperature_c": temp, "power_w": power,
                # the whole device's power over this process's inferences: an upper bound on an idle device
                "energy_mj_per_inference": round(power / rate * 1000, 4) if power is not None and rate else None,
                "throttled": (sample["throttled"] or {}).get("raw"),
                "_throttled": sample["throttled"],
            })
            last_t, last_n = now, n
            if now - start >= seconds:
                break
    finally:
        stop.set()
        worker.join(timeout=10)
    ips = np.array([r["inferences_per_s"] for r in rows if r["inferences_per_s"] is not None])
    temps = [r["temperature_c"] for r in rows if r["temperature_c"] is not None]
    rss = [r["rss_mb"] for r in rows if r["rss_mb"] is not None]
    powers = [r["power_w"] for r in rows if r["power_w"] is not None]
    energies = [r["energy_mj_per_inference"] for r in rows if r["energy_mj_per_inference"] is not None]
    flags = [r.pop("_throttled") for r in rows]
    flags = [f for f in flags if f]
    half = len(ips) // 2
    return {
        "model": str(model), "runtime": art.version(), "threads": art.threads, "seconds": seconds,
        "rows": rows,
        "summary": {
            "inferences": int(sum(r["inferences"] for r in rows)),
            "inferences_per_s_mean": round(float(ips.mean()), 2) if len(ips) else None,
            # Throttling shows as a slower second half.
            "inferences_per_s_first_half": round(float(ips[:half].mean()), 2) if half else None,
            "inferences_per_s_second_half": round(float(ips[half:].mean()), 2) if half else None,
            "rss_mb_max": max(rss) if rss else None,
            "rss_mb_growth": round(rss[-1] - rss[0], 2) if len(rss) > 1 else None,
            "temperature_c_max": max(temps) if temps else None,
            "temperature_unavailable": None if temps else (temp_reason or missing.get("temperature")
                                                           or "no thermal sensor readable"),
            "power_w_mean": round(float(np.mean(powers)), 3) if powers else None,
            "energy_mj_per_inference_mean": round(float(np.mean(energies)), 4) if energies else None,
            "power_unavailable": None if powers else missing.get("power"),
            # Any flag seen in any second, now or since boot (a Pi throttles silently otherwise).
            "throttled": {k: any(f[k] for f in flags) for k in flags[0] if k != "raw"} if flags else None,
            "throttled_unavailable": None if flags else missing.get("throttled"),
        },
    }


def write_soak(result: dict, csv_path: Path) -> list[Path]:
    """CSV (atomically) and, where matplotlib is installed, a PNG beside it; returns the files written."""
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in result["rows"]:
            writer.writerow({k: "" if row[k] is None else row[k] for k in FIELDS})
    written = [csv_path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result["summary"]["plot_unavailable"] = "matplotlib not installed"
        return written
    rows = result["rows"]
    t = [r["t_s"] for r in rows]
    panels = [("inferences_per_s", "inferences / s"), ("process_cpu_pct", "CPU % (process)"),
              ("rss_mb", "RSS (MB)"), ("temperature_c", "CPU temperature (°C)")]
    if any(r["power_w"] is not None for r in rows):
        panels.append(("power_w", "power (W)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.75 * len(panels)), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        values = [r[key] if r[key] is not None else np.nan for r in rows]
        ax.plot(t, values, lw=1.4)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if all(v is None for v in (r[key] for r in rows)):
            ax.set_yticks([])
            ax.text(0.5, 0.5, result["summary"].get("temperature_unavailable") or "not available",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8, color="grey")
        elif key != "temperature_c":
            # From zero: a 0.01 MB wiggle must not look like a leak.
            ax.set_ylim(0, max(v for v in values if v == v) * 1.15 or 1)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"soak: {Path(result['model']).name} ({result['runtime']}, {result['threads']} threads)", fontsize=9)
    fig.tight_layout()
    png = csv_path.with_suffix(".png")
    with atomic_path(png) as tmp:  # medlite's own temporary name, the one its cleanup knows
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return written + [png]
