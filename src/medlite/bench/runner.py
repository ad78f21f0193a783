"""Benchmark one ONNX file or every variant of a run, one fresh worker process per measurement.

`bench_file` measures a file at each thread count (and, given a checkpoint, the PyTorch eager
fp32 reference). `bench_run_dir` does that for every variant in `run_dir/results.json` and
writes `run_dir/bench.json`; `merge_into_results` copies the figures into results.json.

Measurements run one after another, never in parallel: two benchmarks sharing the cores would
each report the other's noise.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from medlite.data.preprocess import IMAGE_SUFFIXES, list_images
from medlite.errors import UsageError
from medlite.runstate import read_json, write_json

# Figures copied from the primary thread count to the top of a bench object (what the table shows).
HEADLINE_KEYS = (
    "runtime", "threads", "latency_ms", "load_ms", "prep_ms", "prep_source", "peak_rss_mb", "cpu_util",
    "throughput_ips", "throughput_batch", "temperature_c", "temperature_unavailable",
    "energy_j_per_inference", "energy_unavailable",
)
# Per-measurement facts that are the same at every thread count: hoisted to the bench object.
SHARED_KEYS = ("machine", "preprocess", "spec_source", "model", "mode")
MAX_SAMPLE_IMAGES = 8


class WorkerFailed(RuntimeError):
    """A worker process failed for a reason other than bad input (crash, timeout, runtime error)."""


def thread_key(threads: int) -> str:
    """1 -> 'threads_1', 0 -> 'threads_all' (all cores; the resolved count is in the entry's `threads`)."""
    return "threads_all" if threads == 0 else f"threads_{threads}"


def _defaults() -> Any:
    from medlite.recipe import BenchConfig  # the one source of defaults

    return BenchConfig()


def _check_settings(threads: Sequence[int], warmup: int, iterations: int, time_budget_s: float, batch: int) -> None:
    if not threads:
        raise UsageError("threads: give at least one thread count (0 = all cores)")
    if any(t < 0 for t in threads) or len(set(threads)) != len(threads):
        raise UsageError(f"threads {list(threads)}: expected distinct counts >= 0 (0 = all cores)")
    if warmup < 0 or iterations < 1 or time_budget_s <= 0 or batch < 1:
        raise UsageError(
            f"bench settings out of range (warmup={warmup} >= 0, iterations={iterations} >= 1, "
            f"time_budget_s={time_budget_s} > 0, throughput_batch={batch} >= 1)"
        )


def find_images(target: Path | None, limit: int = MAX_SAMPLE_IMAGES) -> list[Path]:
    """Up to `limit` image files from a file or folder (sorted, recursive); a missing path is an error."""
    if target is None:
        return []
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise UsageError(f"{target}: images path not found")
    found = list_images(target).files  # hidden entries (macOS ._*, .thumbs/) left out
    if not found:
        raise UsageError(f"{target}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found[:limit]


def _src_root() -> str:
    """The directory holding the `medlite` package: the worker must import the same code as we do."""
    return str(Path(__file__).resolve().parents[2])  # src/medlite/bench/runner.py -> src


def run_worker(argv: list[str], timeout_s: float) -> dict:
    """Run `python -m medlite.bench.worker ARGV`, return its JSON line.

    Raises UsageError when the worker rejected its input (exit 2), WorkerFailed otherwise.
    """
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_src_root(), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "medlite.bench.worker", *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise WorkerFailed(f"benchmark worker timed out after {timeout_s:.0f} s ({' '.join(argv[:2])})") from None
    data = None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            data = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if isinstance(data, dict) and "error" in data:
        if proc.returncode == 2:
            raise UsageError(data["error"])
        raise WorkerFailed(f"benchmark worker failed: {data['error']}")
    if proc.returncode != 0 or not isinstance(data, dict):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WorkerFailed(f"benchmark worker exited with code {proc.returncode}: {tail[:300]}")
    return data


def _common_argv(threads: int, warmup: int, iterations: int, time_budget_s: float, batch: int,
                 images: Iterable[Path]) -> list[str]:
    argv = ["--threads", str(threads), "--warmup", str(warmup), "--iterations", str(iterations),
            "--time-budget", str(time_budget_s), "--throughput-batch", str(batch)]
    for image in images:
        argv += ["--image", str(image)]
    return argv


def _timeout(warmup: int, time_budget_s: float) -> float:
    # Two loops of at most one budget each (plus one overrun call), warm-up, imports and model load.
    return 300.0 + 4 * time_budget_s + 2 * warmup


def _assemble(measurements: dict[str, dict], primary: str) -> dict:
    """Per-thread entries plus the primary thread count's headline figures at the top level."""
    out: dict[str, Any] = {}
    for key, entry in measurements.items():
        for shared in SHARED_KEYS:
            if shared in entry:
                out.setdefault(shared, entry.pop(shared))
        out[key] = entry
    out["primary"] = primary
    out.update({k: measurements[primary].get(k) for k in HEADLINE_KEYS})
    return out


def _speedups(onnx: dict, eager: dict, keys: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """eager / ONNX for latency p50 and ONNX / eager for throughput: > 1 means the ONNX file is faster."""
    out = {}
    for key in keys:
        if key not in onnx or key not in eager:
            continue
        a, b = onnx[key], eager[key]
        p50 = b["latency_ms"]["p50"] / a["latency_ms"]["p50"] if a["latency_ms"]["p50"] > 0 else None
        tp = a["throughput_ips"] / b["throughput_ips"] if b["throughput_ips"] > 0 else None
        out[key] = {"latency_p50": round(p50, 3) if p50 else None, "throughput": round(tp, 3) if tp else None}
    return out


def bench_file(
    model_path: Path | str,
    *,
    input_shape: str | Sequence[int] | None = None,
    images_dir: Path | str | None = None,
    threads: Sequence[int] = (1, 0),
    warmup: int | None = None,
    iterations: int | None = None,
    time_budget_s: float | None = None,
    throughput_batch: int | None = None,
    reference: dict | None = None,
    runtime: str | None = None,
) -> dict:
    """Measure one ONNX file at each thread count, each in a fresh process.

    `input_shape` (N,C,H,W, text or ints) is only needed for files without medlite metadata.
    `images_dir` (a folder or one image) gives real images for the prep timing and the input;
    without it a synthetic image is used and `prep_source` says so. Unset loop settings take
    the recipe defaults (`BenchConfig`). `reference` = {"arch", "checkpoint", "num_classes",
    "in_chans", "img_size"} also times that checkpoint in PyTorch eager fp32 at the same thread
    counts; its failure is recorded as `reference.error` and does not lose the ONNX figures.

    Raises UsageError for bad input (missing file, bad shape), WorkerFailed for crashes.
    """
    d = _defaults()
    warmup = d.warmup if warmup is None else warmup
    iterations = d.iterations if iterations is None else iterations
    time_budget_s = d.time_budget_s if time_budget_s is None else time_budget_s
    batch = d.throughput_batch if throughput_batch is None else throughput_batch
    threads = [int(t) for t in threads]
    _check_settings(threads, warmup, iterations, time_budget_s, batch)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UsageError(f"{model_path}: model file not found")
    images = find_images(Path(images_dir) if images_dir is not None else None)
    if input_shape is not None and not isinstance(input_shape, str):
        input_shape = ",".join(str(int(v)) for v in input_shape)
    if input_shape is not None:
        from medlite.bench.worker import WorkerError, parse_shape

        try:
            parse_shape(input_shape)
        except WorkerError as err:
            raise UsageError(str(err)) from None

    timeout = _timeout(warmup, time_budget_s)
    common = {t: _common_argv(t, warmup, iterations, time_budget_s, batch, images) for t in threads}
    measured = {}
    for t in threads:
        argv = ["onnx", str(model_path), *common[t]] + (["--input-shape", input_shape] if input_shape else [])
        if runtime:
            argv += ["--runtime", runtime]
        measured[thread_key(t)] = run_worker(argv, timeout)
    primary = thread_key(1 if 1 in threads else threads[0])
    bench = _assemble(measured, primary)
    bench["file"] = str(model_path)
    bench["settings"] = {"threads": threads, "warmup": warmup, "iterations": iterations,
                         "time_budget_s": time_budget_s, "throughput_batch": batch}
    if reference:
        bench["reference"] = _reference(reference, bench, threads, common, timeout, primary)
        speed = bench["reference"].get("speedup", {}).get(primary)
        bench["speedup_vs_eager"] = speed["latency_p50"] if speed else None
    return bench


def _reference(ref: dict, onnx: dict, threads: list[int], common: dict[int, list[str]], timeout: float,
               primary: str) -> dict:
    """PyTorch eager fp32 figures for a base model, plus the ONNX file's speed-up over them."""
    try:
        argv = ["--arch", str(ref["arch"]), "--checkpoint", str(ref["checkpoint"]),
                "--num-classes", str(int(ref["num_classes"])), "--in-chans", str(int(ref["in_chans"])),
                "--img-size", str(int(ref["img_size"]))]
    except (KeyError, TypeError, ValueError) as err:
        return {"error": f"reference needs arch, checkpoint, num_classes, in_chans, img_size ({err})"}
    if onnx.get("preprocess"):
        argv += ["--spec-json", json.dumps(onnx["preprocess"])]
    try:
        measured = {thread_key(t): run_worker(["torch", *argv, *common[t]], timeout) for t in threads}
    except (UsageError, WorkerFailed) as err:
        return {"error": str(err), "arch": ref["arch"], "checkpoint": str(ref["checkpoint"])}
    out = _assemble(measured, primary)
    out.pop("preprocess", None)
    out.update(arch=ref["arch"], checkpoint=str(ref["checkpoint"]))
    out["speedup"] = _speedups(onnx, out, [thread_key(t) for t in threads])
    return out


# -- run directories --------------------------------------------------------------------------


def machine_info() -> dict:
    """What the figures were measured on; a benchmark without this is not comparable."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware") and ":" in line:
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from medlite.runtime import cpu_count

    return {"cpu": cpu or platform.machine(), "cores": cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def _samples(run_dir: Path) -> Path | None:
    """run_dir/samples when the pipeline saved test images there (the real deployment input)."""
    folder = run_dir / "samples"
    if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        return folder
    return None


def bench_run_dir(run_dir: Path | str, cfg: Any, *, images: Path | str | None = None,
                  on_variant: Callable[[str, dict], None] | None = None, write: bool = True) -> dict[str, dict]:
    """Benchmark every variant in `run_dir/results.json`; write `run_dir/bench.json` (unless not `write`); return {name: bench}.

    `cfg` is a `BenchConfig` (its `enabled` flag is the pipeline's business, not checked here).
    Prep timing uses `images`, else `run_dir/samples/*.png`, else a synthetic image. Variants
    with a `checkpoint` are base models: with `cfg.reference` they also get PyTorch eager figures.
    A variant that cannot be measured gets {"error": "..."} instead of stopping the others.
    """
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    variants = results.get("variants")
    if not isinstance(variants, list):
        raise UsageError(f"{run_dir / 'results.json'}: no `variants` list")
    dataset = results.get("dataset") or {}
    image_source = Path(images) if images is not None else _samples(run_dir)
    find_images(image_source)  # a bad --images path is the user's error, not every variant's
    out: dict[str, dict] = {}
    for variant in variants:
        name = variant.get("name") or "?"
        rel = variant.get("file")
        bench: dict
        if not rel:
            bench = {"error": f"variant {name}: no `file` in results.json"}
        elif not _has_runtime(rel, variant.get("runtime")):
            bench = {"skipped": f"{rel}: no registered runtime runs this file"}
        else:
            reference = None
            if cfg.reference and variant.get("checkpoint"):
                reference = {
                    "arch": variant.get("arch"),
                    "checkpoint": run_dir / variant["checkpoint"],
                    "num_classes": dataset.get("num_classes"),
                    "in_chans": dataset.get("channels"),
                    "img_size": dataset.get("image_size"),
                }
            try:
                bench = bench_file(
                    run_dir / rel, images_dir=image_source, threads=cfg.threads, warmup=cfg.warmup,
                    iterations=cfg.iterations, time_budget_s=cfg.time_budget_s,
                    throughput_batch=cfg.throughput_batch, reference=reference, runtime=variant.get("runtime"),
                )
                bench["file"] = str(rel)
                if reference and "checkpoint" in bench.get("reference", {}):
                    bench["reference"]["checkpoint"] = str(variant["checkpoint"])
            except (UsageError, WorkerFailed) as err:
                bench = {"error": str(err)}
        bench.setdefault("variant", name)
        out[name] = bench
        if on_variant:
            on_variant(name, bench)
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": cfg.model_dump() if hasattr(cfg, "model_dump") else dict(vars(cfg)),
        "variants": out,
    }
    if write:
        write_json(run_dir / "bench.json", document)
    return out


def _has_runtime(rel: str, runtime: str | None) -> bool:
    from medlite.runtime import ArtifactError, runtime_for

    try:
        runtime_for(rel, runtime)
        return True
    except ArtifactError:
        return False


def load_bench(run_dir: Path | str) -> dict[str, dict]:
    """The per-variant bench objects from `run_dir/bench.json`."""
    data = read_json(Path(run_dir) / "bench.json")
    return data.get("variants") or {}


def merge_into_results(run_dir: Path | str, bench: dict[str, dict]) -> list[str]:
    """Set `variants[i].bench` in results.json for every variant named in `bench`, atomically.

    Returns the names merged; names that are not in results.json are an error (a stale bench.json).
    """
    path = Path(run_dir) / "results.json"
    results = read_json(path)
    by_name = {v.get("name"): v for v in results.get("variants", [])}
    unknown = sorted(set(bench) - set(by_name))
    if unknown:
        raise UsageError(f"{path}: no variant named {', '.join(unknown)} (bench results from another run?)")
    for name, figures in bench.items():
        by_name[name]["bench"] = figures
    write_json(path, results)
    return sorted(bench)
