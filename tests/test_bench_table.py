"""Issue 18: `medlite bench`'s table piped at 80 columns (variant names whole, numbers in columns) and
the runtime named per file (a .tflite file is run by the LiteRT interpreter, not ONNX Runtime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import medlite

SRC = Path(medlite.__file__).resolve().parents[1]  # the subprocess imports the medlite these tests import


def _measurement(p50: float, threads: int) -> dict:
    return {"runtime": "x", "threads": threads, "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 3, "mean": p50,
            "std": 0.01, "runs": 200}, "load_ms": 12.5, "prep_ms": 0.09, "peak_rss_mb": 73.4, "cpu_util": 0.46,
            "throughput_ips": 5217.0, "temperature_c": None, "energy_j_per_inference": None,
            "temperature_unavailable": "no temperature sensor", "system_load_1m": 0.5}


def _entry(file: str, mode: str, p50: float) -> dict:
    one, every = _measurement(p50, 1), _measurement(p50 * 0.8, 2)
    return {"mode": mode, "file": file, "model": f"/run/{file}", "machine": {"platform": "Linux", "cores": 2},
            "threads_1": one, "threads_all": every, **{k: one[k] for k in ("latency_ms", "threads", "load_ms")},
            "reference": {"threads_1": _measurement(p50 * 5, 1), "threads_all": _measurement(p50 * 4, 2),
                          "speedup": {"threads_1": {"latency_p50": 5.0}, "threads_all": {"latency_p50": 5.0}}}}


BENCH = {
    "teacher": _entry("models/teacher.onnx", "onnxruntime", 0.095),
    "student_kd_pruned_int8_static": _entry("models/student_kd_pruned_int8_static.onnx", "onnxruntime", 0.075),
    "student_kd_pruned_int8_static_litert": _entry("models/student_kd_pruned_int8_static.tflite", "litert", 0.061),
    "student_kd_fp16_litert": {"error": "worker crashed (exit -9)", "file": "models/student_kd_fp16.tflite"},
}


def _piped(bench: dict, tmp_path: Path, columns: int = 80) -> str:
    """The table as `medlite bench ... | cat` prints it: a fresh process, stdout a pipe, COLUMNS set."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    code = ("import json, sys; from medlite.bench.table import print_bench_table; "
            "print_bench_table(json.load(open(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": str(columns), "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_piped_at_80_columns_keeps_names_whole_and_numbers_aligned(tmp_path):
    text = _piped(BENCH, tmp_path)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    for name in BENCH:  # each variant's whole name on a line of its own
        assert name in [line.strip() for line in lines], (name, text)
    header = next(line for line in lines if "p50 ms" in line)
    assert "speed-up" in header and "img/s" in header
    # each figure sits under its header: the p50 column's right edge is the same on every measured row
    edge = header.index("p50 ms") + len("p50 ms")
    rows = [line for line in lines if line.strip().split(" ")[0] in ("1", "2*")]
    assert len(rows) == 6 and all(line[edge - 5:edge] in ("0.095", "0.076", "0.075", "0.060", "0.061", "0.049")
                                  for line in rows), rows
    assert "worker crashed" in text


def test_wide_terminal_keeps_the_one_table(tmp_path):
    text = _piped(BENCH, tmp_path, columns=200)
    header = next(line for line in text.splitlines() if "p50 ms" in line)
    assert header.split()[0] == "variant"
    assert any(line.strip().startswith("student_kd_pruned_int8_static_litert ") for line in text.splitlines())


def test_the_runtime_is_named_per_file(tmp_path):
    from medlite.bench.table import bench_title

    assert bench_title({"x": BENCH["student_kd_pruned_int8_static_litert"]}) == "Benchmark (batch 1, LiteRT interpreter)"
    assert bench_title({"x": BENCH["teacher"]}) == "Benchmark (batch 1, ONNX Runtime)"
    mixed = bench_title(BENCH)
    assert mixed == "Benchmark (batch 1; .onnx: ONNX Runtime; .tflite: LiteRT interpreter)"
    only_tflite = _piped({"m.tflite": BENCH["student_kd_pruned_int8_static_litert"]}, tmp_path)
    assert "LiteRT interpreter" in only_tflite and "ONNX Runtime" not in only_tflite
