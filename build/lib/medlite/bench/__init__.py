"""Benchmarks measured on the deployed file: latency, throughput, load time, memory, CPU, energy.

Every figure comes from a fresh worker process (`medlite.bench.worker`) so memory and load
time are honest. This package's `__init__` imports nothing: the ONNX worker runs on edge
devices with only numpy, onnxruntime and Pillow, and the public helpers load lazily.

    from medlite.bench import bench_file, bench_run_dir, merge_into_results, print_bench_table
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "bench_file": "medlite.bench.runner",
    "bench_run_dir": "medlite.bench.runner",
    "merge_into_results": "medlite.bench.runner",
    "load_bench": "medlite.bench.runner",
    "print_bench_table": "medlite.bench.table",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medlite.bench' has no attribute {name!r}")
