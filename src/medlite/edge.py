"""Edge runner: classify images with an exported medlite ONNX file on a device that has nothing else.

    python -m medlite.edge MODEL.onnx IMAGE_OR_DIR [--threads N] [--top-k K]

It prints one JSON document: per image the predicted class, the probability of every class,
the top-k classes and timings, plus the model load time and the process's peak RSS.

Why this module is so strict about imports: the deployment target (a Raspberry Pi, an old
laptop) gets `pip install --no-deps medlite numpy onnxruntime pillow` and nothing more. So this
file imports only the standard library, numpy, onnxruntime and `medlite.data.preprocess`
(numpy + Pillow), and it prepares images with exactly the functions training used; a test runs
it with torch, onnx, scipy, pydantic, ... made unimportable. `medlite.bench.worker` reuses the
session and spec helpers below for the same reason.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medlite.data.preprocess import IMAGE_SUFFIXES, PreprocessSpec, load_image, normalize

# medlite.export.onnx imports `onnx` only inside its functions, so its constants are safe to share here.
from medlite.export.onnx import INPUT_NAME, OPERATING_POINT_KEY, OUTPUT_NAME, PREPROCESS_KEY  # noqa: E402,F401


class EdgeError(Exception):
    """A fault the user can fix (bad path, no preprocessing spec); printed as one line, exit code 2."""


# -- helpers shared with medlite.bench.worker -------------------------------------------------


def resolve_threads(threads: int) -> int:
    """0 means "all cores this process may use"; we pass the resolved number to the runtime so the
    thread count we report is the one that ran (ONNX Runtime's own default counts physical cores)."""
    if threads < 0:
        raise EdgeError(f"--threads {threads}: must be 0 (all cores) or a positive number")
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def make_session(model_path: Path, threads: int):
    """An ONNX Runtime CPU session with the same options as `medlite.export.onnx.session`.

    One inter-op thread: our graphs are a single chain, and extra pools only add contention.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = resolve_threads(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises several private exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EdgeError(f"{model_path}: not a loadable ONNX model ({first[:200]})") from None


def _spec_from_json(data: Any, where: str) -> PreprocessSpec:
    """Accept the spec itself or a document that nests it under `medlite.preprocess` / `preprocess`."""
    if isinstance(data, str):
        data = json.loads(data)
    if isinstance(data, dict):
        for key in (PREPROCESS_KEY, "preprocess"):
            if key in data:
                return _spec_from_json(data[key], where)
    try:
        return PreprocessSpec.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise EdgeError(f"{where}: not a medlite preprocessing spec ({type(err).__name__}: {err})") from None


def sidecar_paths(model_path: Path) -> list[Path]:
    """Where a spec for a model written by another tool may live: MODEL.onnx.json, then MODEL.json."""
    return [model_path.with_name(model_path.name + ".json"), model_path.with_suffix(".json")]


def read_spec(model_path: Path, session) -> tuple[PreprocessSpec | None, str]:
    """The preprocessing the model was trained with, and where it came from.

    The ONNX metadata comes first (medlite writes it into every file); a sidecar JSON lets a
    model exported elsewhere be used too. Returns (None, reason) when there is neither.
    """
    meta = session.get_modelmeta().custom_metadata_map
    if PREPROCESS_KEY in meta:
        try:
            return _spec_from_json(meta[PREPROCESS_KEY], f"{model_path} metadata {PREPROCESS_KEY}"), "onnx metadata"
        except json.JSONDecodeError as err:
            raise EdgeError(f"{model_path}: metadata {PREPROCESS_KEY} is not valid JSON ({err})") from None
    for sidecar in sidecar_paths(model_path):
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise EdgeError(f"{sidecar}: unreadable preprocessing sidecar ({err})") from None
            return _spec_from_json(data, str(sidecar)), str(sidecar)
    names = " or ".join(p.name for p in sidecar_paths(model_path))
    return None, f"no {PREPROCESS_KEY} metadata in {model_path.name} and no sidecar {names}"


def read_operating_point(model_path: Path, session, class_names: Sequence[str]) -> dict | None:
    """The decision threshold stored in the file (`medlite.operating_point`), checked against its classes."""
    raw = session.get_modelmeta().custom_metadata_map.get(OPERATING_POINT_KEY)
    if raw is None:
        return None
    try:
        op = json.loads(raw)
        index, threshold = int(op["positive_index"]), float(op["threshold"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise EdgeError(f"{model_path}: metadata {OPERATING_POINT_KEY} is not a valid operating point ({err})") from None
    if not 0 <= index < len(class_names) or class_names[index] != op.get("positive_class", class_names[index]):
        raise EdgeError(f"{model_path}: metadata {OPERATING_POINT_KEY} names class {op.get('positive_class')!r} at index {index}, "
                        f"which does not match the model's classes")
    return {**op, "positive_index": index, "threshold": threshold}


def apply_operating_point(probs: np.ndarray, op: dict | None) -> int:
    """The decided class: the operating point's class when its probability reaches the threshold,
    else the most probable other class; plain argmax without an operating point.
    (The same rule as medlite.evaluate.operating_point.decide, kept here free of medlite's training side.)"""
    if op is None:
        return int(np.argmax(probs))
    index = op["positive_index"]
    if probs[index] >= op["threshold"]:
        return index
    others = probs.astype(np.float64).copy()
    others[index] = -np.inf
    return int(np.argmax(others))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux: VmHWM from /proc/self/status. Not ru_maxrss: Linux carries ru_maxrss across execve, so
    a runner started from a big process (pytest with torch loaded, the pipeline) would report its
    parent's peak. Elsewhere ru_maxrss (KiB on Linux/BSD, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 2)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 2)


def find_images(target: Path) -> list[Path]:
    """One file, or every image under a folder (recursive, sorted so output order is stable)."""
    if target.is_file():
        return [target]
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    raise EdgeError(f"{target}: no such file or folder")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: subtract the max)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# -- the runner -------------------------------------------------------------------------------


def classify(model_path: Path, target: Path, threads: int = 0, top_k: int = 1, use_threshold: bool = True) -> dict:
    """Classify `target` (an image or a folder) one image at a time, as a device would.

    `class` is the decision at the file's operating point (`medlite.operating_point` metadata,
    chosen on validation data) when it has one and `use_threshold`; `argmax_class` is always given.

    Unreadable files inside a folder are listed under `skipped`; a single unreadable file,
    or a folder without any readable image, is an error.
    """
    if not model_path.is_file():
        raise EdgeError(f"{model_path}: model file not found")
    if top_k < 1:
        raise EdgeError(f"--top-k {top_k}: must be at least 1")
    images = find_images(target)
    if not images:
        raise EdgeError(f"{target}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")

    start = time.perf_counter()
    session = make_session(model_path, threads)
    spec, spec_source = read_spec(model_path, session)
    load_ms = (time.perf_counter() - start) * 1000
    if spec is None:
        raise EdgeError(f"{model_path}: no preprocessing spec ({spec_source})")
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    names = list(spec.class_names)
    k = min(top_k, len(names))
    op = read_operating_point(model_path, session, names) if use_threshold else None

    results, skipped = [], []
    for path in images:
        t0 = time.perf_counter()
        try:
            pixels = load_image(path, spec.channels, spec.image_size)
        except (OSError, ValueError, SyntaxError) as err:
            if len(images) == 1 and target.is_file():
                raise EdgeError(f"{path}: not a readable image ({type(err).__name__})") from None
            skipped.append({"path": str(path), "error": f"{type(err).__name__}: {err}"[:200]})
            continue
        x = normalize(pixels[None], spec)
        t1 = time.perf_counter()
        logits = session.run([output_name], {input_name: x})[0]
        t2 = time.perf_counter()
        probs = softmax(logits)[0]
        if len(probs) != len(names):
            raise EdgeError(f"{model_path}: model has {len(probs)} outputs but the spec names {len(names)} classes")
        order = np.argsort(-probs, kind="stable")
        decided = apply_operating_point(probs, op)
        results.append(
            {
                "path": str(path),
                "class": names[decided],
                "class_index": decided,
                "argmax_class": names[int(order[0])],
                "probabilities": {name: float(p) for name, p in zip(names, probs)},
                "top_k": [{"class": names[int(i)], "probability": float(probs[i])} for i in order[:k]],
                "prep_ms": round((t1 - t0) * 1000, 4),
                "inference_ms": round((t2 - t1) * 1000, 4),
            }
        )
    if not results:
        raise EdgeError(f"{target}: none of the {len(images)} image files could be read")

    import onnxruntime as ort

    inference = np.array([r["inference_ms"] for r in results])
    prep = np.array([r["prep_ms"] for r in results])
    return {
        "model": str(model_path),
        "runtime": f"onnxruntime {ort.__version__}",
        "threads": resolve_threads(threads),
        "spec_source": spec_source,
        "preprocess": spec.to_dict(),
        "operating_point": op,
        "load_ms": round(load_ms, 3),
        "images": results,
        "skipped": skipped,
        "summary": {
            "count": len(results),
            "skipped": len(skipped),
            "prep_ms_mean": round(float(prep.mean()), 4),
            "inference_ms_mean": round(float(inference.mean()), 4),
            "inference_ms_p50": round(float(np.percentile(inference, 50)), 4),
            # The first run pays for lazy allocations; the rest is what a device sees in a loop.
            "inference_ms_first": round(float(inference[0]), 4),
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medlite.edge",
        description="Classify an image (or every image in a folder) with a medlite ONNX model; prints JSON.",
    )
    parser.add_argument("model", type=Path, help="the .onnx file (preprocessing read from its metadata or MODEL.json)")
    parser.add_argument("target", type=Path, help="an image file or a folder (searched recursively)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads; 0 = all cores (default)")
    parser.add_argument("--top-k", type=int, default=1, help="how many best classes to list per image (default 1)")
    parser.add_argument("--argmax", action="store_true", help="ignore the operating point stored in the model; use the most probable class")
    parser.add_argument("--indent", type=int, default=2, help="JSON indentation; 0 for one line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: JSON on stdout and exit 0, or one line on stderr and exit 2."""
    args = _parser().parse_args(argv)
    try:
        report = classify(args.model, args.target, threads=args.threads, top_k=args.top_k, use_threshold=not args.argmax)
    except EdgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=args.indent or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
