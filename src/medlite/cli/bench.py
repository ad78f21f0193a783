"""`medlite bench`: benchmark a run directory (every variant) or one model file; `--soak` for a resource monitor.

Module-level imports stay light (typer, the standard library, medlite.errors and .runstate) so `medlite --help` stays instant;
the work (onnxruntime, numpy, rich, pydantic) is imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.cli.common import DebugOpt, check_writable
from medlite.errors import UsageError
from medlite.runstate import RESOLVED_RECIPE, RunDir, is_run_dir, write_json


def parse_threads(text: str) -> list[int]:
    """'1,0' -> [1, 0]; 0 means all cores."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"--threads {text!r}: expected comma-separated integers, e.g. 1,0 (0 = all cores)") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise UsageError(f"--threads {text!r}: expected distinct integers >= 0, e.g. 1,0 (0 = all cores)")
    return values


def _run_config(run_dir: Optional[Path], overrides: dict):
    """The run's own bench settings (its recipe.resolved.yaml), overridden by the command line."""
    # local: yaml and the recipe schema (pydantic) are not for --help.
    import yaml
    from pydantic import ValidationError

    from medlite.recipe import BenchConfig

    base: dict = {}
    recipe = run_dir / RESOLVED_RECIPE if run_dir is not None else None
    if recipe is not None and recipe.is_file():
        try:
            tree = yaml.safe_load(recipe.read_text()) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"{recipe}: malformed YAML ({err})") from None
        base = dict(tree.get("bench") or {}) if isinstance(tree, dict) else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return BenchConfig.model_validate(base)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"bench.{key}: {first['msg']} (got {first.get('input')!r})") from None


def bench(
    target: Annotated[Path, typer.Argument(help="a run directory (with results.json) or a model file (.onnx, .tflite)")],
    input_shape: Annotated[
        Optional[str], typer.Option("--input-shape", help="N,C,H,W for ONNX files without medlite metadata, e.g. 1,1,28,28")
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option("--images", help="image file or folder for prep timing (default: run samples, else synthetic)")
    ] = None,
    threads: Annotated[
        Optional[str], typer.Option("--threads", help="comma-separated thread counts, 0 = all cores [default: recipe, else 1,0]")
    ] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="untimed runs first [default: recipe]")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="timed batch-1 runs at most [default: recipe]")] = None,
    time_budget: Annotated[
        Optional[float], typer.Option("--time-budget", help="seconds per measurement loop at most [default: recipe]")
    ] = None,
    throughput_batch: Annotated[
        Optional[int], typer.Option("--throughput-batch", help="batch size for images/s [default: recipe]")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the figures to this JSON file")] = None,
    layers: Annotated[bool, typer.Option(
        "--layers", help="also the per-layer view: operators, parameter bytes, MACs, int8 or float, latency shares")] = False,
    soak: Annotated[Optional[float], typer.Option(
        "--soak", help="sustained inference for SECONDS, sampling CPU %, RSS and temperature every second")] = None,
    soak_out: Annotated[Optional[Path], typer.Option(
        "--soak-out", help="CSV for --soak (a PNG plot goes beside it) [default: RUN_DIR/figures/soak.csv or ./soak.csv]")] = None,
    debug: DebugOpt = False,
) -> None:
    """Measure latency, throughput, load time, memory and CPU of exported models, each in a fresh process."""
    # local: the bench runner (numpy, subprocess workers) and rich are not for --help.
    from rich.console import Console

    from medlite.bench.runner import bench_file, bench_run_dir
    from medlite.bench.table import print_bench_table

    console = Console()
    if soak is not None:
        _soak(target, soak, soak_out, threads, console)
        return
    overrides = {
        "threads": parse_threads(threads) if threads is not None else None,
        "warmup": warmup,
        "iterations": iterations,
        "time_budget_s": time_budget,
        "throughput_batch": throughput_batch,
    }
    if json_out is not None and not json_out.parent.is_dir():
        raise UsageError(f"--json {json_out}: folder {json_out.parent} does not exist")
    if images is not None and not images.exists():
        raise UsageError(f"--images {images}: no such file or folder")
    if target.is_dir():
        if not (target / "results.json").is_file():
            raise UsageError(f"{target}: not a run directory (no results.json); give a run directory or an .onnx file")
        if input_shape is not None:
            raise UsageError("--input-shape: only for a single .onnx file (a run's models carry their own shape)")
        cfg = _run_config(target, overrides)
        # bench.json is written only into a folder medlite made, under its lock (not during a live run).
        ours = is_run_dir(target)
        with RunDir(target) as run:
            if ours:
                run.lock()
            with console.status("benchmarking variants (one fresh process per measurement)..."):
                result = bench_run_dir(target, cfg, images=images, write=ours)
        print_bench_table(result, console)
        if ours:
            console.print(f"wrote {target / 'bench.json'}")
        else:
            console.print(f"bench.json not written: {target} was not made by medlite (no .medlite-run); "
                          "--json FILE saves the figures")
    elif target.is_file():
        # local: the runtime registry imports numpy.
        from medlite.runtime import ArtifactError, runtime_for

        try:
            runtime_for(target)
        except ArtifactError as err:
            raise UsageError(f"{err}; give a model file or a run directory") from None
        cfg = _run_config(None, overrides)
        with console.status(f"benchmarking {target.name}..."):
            result = bench_file(
                target, input_shape=input_shape, images_dir=images, threads=cfg.threads, warmup=cfg.warmup,
                iterations=cfg.iterations, time_budget_s=cfg.time_budget_s, throughput_batch=cfg.throughput_batch,
            )
        print_bench_table({target.name: result}, console)
        if layers:
            result["layers"] = _layers(target, None, input_shape, console)
    else:
        raise UsageError(f"{target}: no such file or directory")
    if layers and target.is_dir():
        for name, entry in result.items():
            rel = entry.get("file")
            if rel and "error" not in entry and "skipped" not in entry:
                entry["layers"] = _layers(target / rel, entry.get("runtime"), None, console)
    if json_out is not None:
        write_json(json_out, result)
        console.print(f"wrote {json_out}")


def _layers(path: Path, runtime: Optional[str], input_shape: Optional[str], console) -> dict:
    # local: onnx, onnxruntime (or ai-edge-litert) are not for --help.
    from medlite.bench.layers import layer_view, print_layers

    shape = None
    if input_shape is not None:
        from medlite.bench.worker import WorkerError, parse_shape

        try:
            shape = tuple(parse_shape(input_shape))
        except WorkerError as err:
            raise UsageError(str(err)) from None
    view = layer_view(path, runtime, input_shape=shape)
    console.print()
    print_layers(view, console)
    return view


def _soak(target: Path, seconds: float, out: Optional[Path], threads: Optional[str], console) -> None:
    # local: the soak monitor and the runtimes (onnxruntime, numpy) are not for --help.
    from medlite.bench.soak import soak, write_soak
    from medlite.deploy.select import resolve_model
    from medlite.runtime import ArtifactError

    if seconds <= 0:
        raise UsageError(f"--soak {seconds}: must be a positive number of seconds")
    counts = parse_threads(threads) if threads is not None else [0]
    if len(counts) != 1:
        raise UsageError("--threads: give one thread count with --soak")
    try:
        path, runtime, rule = resolve_model(target)
    except ArtifactError as err:
        raise UsageError(str(err)) from None
    out = out or (target / "figures" / "soak.csv" if target.is_dir() else Path("soak.csv"))
    check_writable(out, "--soak-out")  # before the soak: its minutes must not end in "cannot write"
    console.print(f"model: {rule}")
    with console.status(f"soak: {seconds:g} s of sustained inference..."):
        try:
            result = soak(path, seconds, runtime=runtime, threads=counts[0])
        except ArtifactError as err:
            raise UsageError(str(err)) from None
    files = write_soak(result, out)
    write_json(out.with_suffix(".json"), {k: v for k, v in result.items() if k != "rows"})
    s = result["summary"]
    console.print(
        f"{s['inferences']} inferences, {s['inferences_per_s_mean']}/s (first half {s['inferences_per_s_first_half']}, "
        f"second half {s['inferences_per_s_second_half']}); RSS max {s['rss_mb_max']} MB (growth {s['rss_mb_growth']}); "
        + (f"temperature max {s['temperature_c_max']} °C" if s["temperature_c_max"] is not None
           else f"temperature unavailable ({s['temperature_unavailable']})")
    )
    throttled = s.get("throttled")
    console.print(
        (f"power {s['power_w_mean']} W, {s['energy_mj_per_inference_mean']} mJ per inference (whole device)"
         if s.get("power_w_mean") is not None else f"power unavailable ({s.get('power_unavailable')})") + "; "
        + (("throttling: " + (", ".join(k for k, v in throttled.items() if v) or "none")) if throttled is not None
           else f"throttling flags unavailable ({s.get('throttled_unavailable')})")
    )
    console.print("wrote " + ", ".join(str(f) for f in files))
