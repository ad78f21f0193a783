"""One measurement in a fresh process; prints exactly one JSON line on stdout.

    python -m medlite.bench.worker onnx MODEL.onnx --threads 1 [--image PNG ...] [--input-shape 1,1,28,28]
    python -m medlite.bench.worker torch --arch A --checkpoint W.safetensors --num-classes K \
        --in-chans C --img-size S --threads 1 [--image PNG ...]

Why a fresh process per measurement: peak RSS (ru_maxrss) only ever grows, session creation
is faster when the runtime is already loaded, and two models in one process share caches and
thread pools. A new interpreter makes load time, memory and thread count honest.

The `onnx` (alias `artifact`) mode runs any deployable file through `medlite.runtime` and
imports only numpy, the file's runtime (onnxruntime or ai-edge-litert) and Pillow (through
`medlite.data.preprocess`), so it runs on an edge device too; `torch` mode is the PyTorch
eager fp32 reference and imports torch and medlite.models.

On failure it prints {"error": "..."} and exits 2 (bad input) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

_START = time.perf_counter()

from medlite.bench import measure  # noqa: E402 - stdlib only


class WorkerError(Exception):
    """Bad input (missing file, unknown shape): reported as one line, exit code 2."""


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,1,28,28' or '1x1x28x28' -> (1, 1, 28, 28); must be 4 positive ints (N, C, H, W)."""
    parts = text.replace("x", ",").replace(" ", "").strip(",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise WorkerError(f"--input-shape {text!r}: expected N,C,H,W integers, e.g. 1,1,28,28") from None
    if len(shape) != 4 or min(shape) < 1:
        raise WorkerError(f"--input-shape {text!r}: expected 4 positive integers N,C,H,W, e.g. 1,1,28,28")
    return shape


# -- input preparation (shared by both modes) ---------------------------------------------------


def prepare_input(spec, images: list[Path], channels: int, size: int) -> tuple:
    """The batch-1 input and the cost of producing it from an image file.

    With images: decode, resize and normalise real files (cycled), exactly as training did.
    Without: a random PNG of the model's size decoded from memory, so decode and normalise are
    still timed (but no resize), and `prep_source` says the figure is synthetic.
    Returns (x (1, C, S, S) float32, prep facts dict).
    """
    import numpy as np
    from PIL import Image

    from medlite.data.preprocess import PreprocessSpec, load_image, normalize

    if spec is None:
        spec = PreprocessSpec(size, channels, 0.5, 0.5, ())
    if images:
        for path in images:
            if not path.is_file():
                raise WorkerError(f"{path}: image not found")
        cycle = {"i": 0}

        def load() -> object:
            path = images[cycle["i"] % len(images)]
            cycle["i"] += 1
            return load_image(path, spec.channels, spec.image_size)

        try:
            first = load_image(images[0], spec.channels, spec.image_size)
        except (OSError, ValueError, SyntaxError) as err:
            raise WorkerError(f"{images[0]}: not a readable image ({type(err).__name__})") from None
        source = f"real image{'s' if len(images) > 1 else ''}: {images[0]}" + (
            f" (+{len(images) - 1} more)" if len(images) > 1 else ""
        )
    else:
        rng = np.random.default_rng(0)
        mode = "L" if spec.channels == 1 else "RGB"
        pixels = rng.integers(0, 256, (spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if spec.channels == 1 else pixels, mode=mode).save(buffer, format="PNG")

        def load() -> object:
            buffer.seek(0)
            return load_image(buffer, spec.channels, spec.image_size)

        first = load()
        source = f"synthetic: random {spec.image_size}x{spec.image_size} PNG decoded from memory (no image given)"
    first_ms, median_ms = measure.median_ms(lambda: normalize(load()[None], spec), repeats=20)
    x = normalize(first[None], spec)
    return x, {"prep_ms": median_ms, "prep_first_ms": first_ms, "prep_source": source}


# -- the two modes ------------------------------------------------------------------------------


def run_onnx(args: argparse.Namespace) -> dict:
    """Any deployable file, in the runtime the registry (or --runtime) picks: ONNX Runtime, LiteRT, ..."""
    t0 = time.perf_counter()
    import numpy as np

    from medlite.runtime import ArtifactError, open_artifact, resolve_runtime, resolve_threads

    import_ms = (time.perf_counter() - t0) * 1000
    if not args.model.is_file():
        raise WorkerError(f"{args.model}: model file not found")
    try:
        runtime = resolve_runtime(args.model, args.runtime)
        # Import the runtime library before timing the load: import time is reported on its own.
        t0 = time.perf_counter()
        try:
            importlib.import_module(runtime.library)
        except ImportError:
            raise WorkerError(f"{args.model}: {runtime.name} is not installed ({runtime.install_hint})") from None
        import_ms += (time.perf_counter() - t0) * 1000
        import_rss = measure_rss()
        threads = resolve_threads(args.threads)
        t0 = time.perf_counter()
        art = open_artifact(args.model, runtime=runtime.name, threads=threads)
    except ArtifactError as err:
        raise WorkerError(str(err)) from None
    load_ms = (time.perf_counter() - t0) * 1000
    spec, spec_source = art.spec, art.spec_source
    declared = art.input_shape

    shape = _artifact_shape(declared, spec, args.input_shape)
    notes = []
    if spec is None:
        notes.append(f"no preprocessing spec ({spec_source}); prep timed with mean=0.5, std=0.5 from the input shape")
    prep = {"prep_ms": None, "prep_first_ms": None, "prep_source": None}
    if shape[2] == shape[3]:
        x, prep = prepare_input(spec, args.image, shape[1], shape[2])
    else:
        x = np.random.default_rng(0).standard_normal((1, *shape[1:]), dtype=np.float32)
        prep["prep_unavailable"] = "non-square input: medlite preprocessing makes square images only"
    if art.input_dtype not in ("float32", "float16", "float64", "int8", "uint8"):
        raise WorkerError(f"{args.model}: input type {art.input_dtype} is not supported by the benchmark")
    x = x.astype(np.float32)
    fixed = declared[0]
    tp_batch = fixed if fixed else args.throughput_batch
    x1 = np.repeat(x, fixed or 1, axis=0)
    xb = np.repeat(x, tp_batch, axis=0)

    def one() -> object:
        return art.run(x1)

    def many() -> object:
        return art.run(xb)

    if args.input_shape:
        try:  # a shape the graph cannot take (e.g. too small for its pooling) is the user's value at fault
            one()
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise WorkerError(f"--input-shape {args.input_shape}: the model cannot run on it ({str(err).splitlines()[0][:160]})") from None
    facts = _measure(one, many, tp_batch, args)
    if fixed and tp_batch != args.throughput_batch:
        notes.append(f"the model's batch size is fixed at {tp_batch}; throughput measured at that batch")
    return _result(art.runtime, art.version(), str(args.model), x1.shape, threads, args, import_ms, import_rss,
                   load_ms, prep, facts, notes, files=[str(f) for f in art.files()], file_bytes=art.file_bytes(),
                   spec_source=spec_source if spec is not None else None,
                   preprocess=spec.to_dict() if spec is not None else None)


def load_weights(model, checkpoint: Path):
    """`model` (fresh from `create`) with the checkpoint's weights, exactly as the pipeline loads a variant."""
    from medlite.models.weights import load_checkpoint

    return load_checkpoint(model, checkpoint)


def run_torch(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    import torch

    from medlite.errors import UsageError
    from medlite.models import create
    from medlite.runtime import resolve_threads

    try:  # create() imports these lazily; import them here so load_ms is model build + weights only
        import timm  # noqa: F401

        import medlite.compress.prune  # noqa: F401
        from medlite.models import kinds

        kinds()  # every registered model kind's module
    except ImportError:  # pragma: no cover - timm is a dependency of the training install
        pass
    import_ms = (time.perf_counter() - t0) * 1000
    import_rss = measure_rss()
    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    if not args.checkpoint.is_file():
        raise WorkerError(f"{args.checkpoint}: checkpoint not found")
    t0 = time.perf_counter()
    try:
        model = create(args.arch, num_classes=args.num_classes, in_chans=args.in_chans, img_size=args.img_size)
    except UsageError as err:
        raise WorkerError(str(err)) from None
    try:
        load_weights(model, args.checkpoint)
    except Exception as err:  # noqa: BLE001 - safetensors/torch raise many types for a wrong file
        raise WorkerError(f"{args.checkpoint}: does not fit {args.arch} ({type(err).__name__}: {str(err)[:160]})") from None
    model.eval()
    load_ms = (time.perf_counter() - t0) * 1000
    spec = None
    if args.spec_json:
        from medlite.data.preprocess import PreprocessSpec

        spec = PreprocessSpec.from_dict(json.loads(args.spec_json))
    x, prep = prepare_input(spec, args.image, args.in_chans, args.img_size)
    x1 = torch.from_numpy(x)
    xb = x1.repeat(args.throughput_batch, 1, 1, 1)

    def one() -> object:
        with torch.inference_mode():
            return model(x1)

    def many() -> object:
        with torch.inference_mode():
            return model(xb)

    facts = _measure(one, many, args.throughput_batch, args)
    return _result("torch", f"torch {torch.__version__} eager fp32", f"{args.arch} <- {args.checkpoint}", x1.shape,
                   threads, args, import_ms, import_rss, load_ms, prep, facts, [])


def _result(mode: str, runtime: str, model: str, input_shape, threads: int, args: argparse.Namespace,
            import_ms: float, import_rss: float, load_ms: float, prep: dict, facts: dict, notes: list[str],
            **extra) -> dict:
    """The worker's JSON object, the same keys in both modes."""
    return {
        "mode": mode,
        "runtime": runtime,
        "model": model,
        **extra,
        "input_shape": list(input_shape),
        "threads": threads,
        "threads_requested": args.threads,
        "import_ms": round(import_ms, 3),
        "import_rss_mb": import_rss,
        "load_ms": round(load_ms, 3),
        **prep,
        **facts,
        "notes": notes,
    }


def _artifact_shape(declared: tuple, spec, input_shape: str | None) -> tuple[int, int, int, int]:
    """N, C, H, W for the benchmark: from the spec, else --input-shape, else the model's static dims."""
    batch = declared[0] if declared and isinstance(declared[0], int) and declared[0] > 0 else 1
    given = parse_shape(input_shape) if input_shape else None
    if spec is not None:
        shape = (batch, spec.channels, spec.image_size, spec.image_size)
        if given and tuple(given[1:]) != shape[1:]:
            raise WorkerError(f"--input-shape {input_shape}: the model's spec says {','.join(map(str, shape))}")
        return shape
    if given:
        # A static dimension of the model that the given shape contradicts is bad input, said
        # here with the value, not an ONNX Runtime error from inside the timing loop.
        fixed = [d if isinstance(d, int) and d > 0 else None for d in declared]
        if len(declared) != 4 or any(f is not None and f != g for f, g in zip(fixed[1:], given[1:])):
            takes = ",".join("N" if i == 0 else str(f) if f else "?" for i, f in enumerate(fixed))
            raise WorkerError(f"--input-shape {input_shape}: the model takes {takes}")
        return (batch, *given[1:])
    if len(declared) == 4 and all(isinstance(d, int) and d > 0 for d in declared[1:]):
        return (batch, *declared[1:])
    raise WorkerError(f"cannot tell the input shape {list(declared)}: pass --input-shape N,C,H,W")


def _measure(one: Callable[[], object], many: Callable[[], object], batch: int, args: argparse.Namespace) -> dict:
    """Latency loop, throughput loop and sensors; the same for ONNX Runtime and PyTorch."""
    from medlite.runtime import cpu_count  # imported by both modes already (not timed twice)

    energy = measure.EnergyMeter()
    temp_start, _ = measure.read_temperature()
    load_before = measure.load_average()
    loop = measure.timed_loop(one, args.warmup, args.iterations, args.time_budget, energy)
    temp, temp_reason = measure.read_temperature()
    from medlite.bench.telemetry import Telemetry  # stdlib only: fine on a device

    throttled, throttled_reason = Telemetry().throttled()  # a Raspberry Pi's firmware flags, now and since boot
    # As many images as the latency loop (at least 3 batches), within the same time budget.
    max_batches = max(3, -(-args.iterations // batch))
    tp = measure.throughput(many, batch, max_batches, args.time_budget)
    joules = loop.energy_j / len(loop.samples_ms) if loop.energy_j is not None else None
    return {
        "latency_ms": measure.summarize(loop.samples_ms),
        "warmup": args.warmup,
        "stopped_by": loop.stopped_by,
        "loop_wall_s": round(loop.wall_s, 4),
        **tp,
        "cpu_util": round(loop.cpu_s / loop.wall_s, 3) if loop.wall_s > 0 else None,
        "peak_rss_mb": measure_rss(),
        "temperature_c": temp,
        "temperature_start_c": temp_start,
        "temperature_unavailable": temp_reason,
        "throttled": throttled,
        "throttled_unavailable": None if throttled else throttled_reason,
        "energy_j_per_inference": round(joules, 6) if joules is not None else None,
        "energy_unavailable": energy.unavailable if joules is None else None,
        "energy_scope": energy.scope if joules is not None else None,
        # Other work on the machine inflates latency; a load above the core count means noisy figures.
        "system_load_1m": load_before,
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cores": cpu_count()},
    }


def measure_rss() -> float:
    from medlite.runtime import peak_rss_mb

    return peak_rss_mb()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medlite.bench.worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=1, help="0 = all cores")
    common.add_argument("--warmup", type=int, default=10)
    common.add_argument("--iterations", type=int, default=200)
    common.add_argument("--time-budget", type=float, default=5.0, help="seconds per loop")
    common.add_argument("--throughput-batch", type=int, default=32)
    common.add_argument("--image", type=Path, action="append", default=[], help="image(s) for prep timing and input")
    onnx = sub.add_parser("onnx", aliases=["artifact"], parents=[common])
    onnx.add_argument("model", type=Path)
    onnx.add_argument("--input-shape", default=None)
    onnx.add_argument("--runtime", default=None, help="registered runtime name (default: from the file suffix)")
    eager = sub.add_parser("torch", parents=[common])
    eager.add_argument("--arch", required=True)
    eager.add_argument("--checkpoint", type=Path, required=True)
    eager.add_argument("--num-classes", type=int, required=True)
    eager.add_argument("--in-chans", type=int, required=True)
    eager.add_argument("--img-size", type=int, required=True)
    eager.add_argument("--spec-json", default=None, help="PreprocessSpec JSON (mean/std for prep timing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for name in ("warmup", "throughput_batch", "iterations"):
            if getattr(args, name) < (0 if name == "warmup" else 1):
                raise WorkerError(f"--{name.replace('_', '-')} {getattr(args, name)}: out of range")
        if args.time_budget <= 0:
            raise WorkerError(f"--time-budget {args.time_budget}: must be positive")
        result = run_onnx(args) if args.mode in ("onnx", "artifact") else run_torch(args)
    except WorkerError as err:
        print(json.dumps({"error": str(err)}))
        return 2
    except Exception as err:  # noqa: BLE001 - report, never hang the parent
        traceback.print_exc(file=sys.stderr)
        print(json.dumps({"error": f"{type(err).__name__}: {err}"[:500]}))
        return 1
    result["worker_wall_s"] = round(time.perf_counter() - _START, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
