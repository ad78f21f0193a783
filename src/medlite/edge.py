"""Edge runner: classify images with an exported medlite model on a device that has nothing else.

    python -m medlite.edge MODEL.onnx|MODEL.tflite IMAGE_OR_DIR [--threads N] [--top-k K]

It prints one JSON document: per image the predicted class, the probability of every class,
the top-k classes and timings, plus the model load time and the process's peak RSS.

Why this module is so strict about imports: the deployment target (a Raspberry Pi, an old
laptop) gets `pip install --no-deps medlite numpy onnxruntime pillow` and nothing more. So this
file imports only the standard library, numpy, the model's runtime (onnxruntime, or
ai-edge-litert for .tflite, through `medlite.runtime`) and `medlite.data.preprocess` (numpy + Pillow), and it prepares images with exactly the functions training used; a test runs
it with torch, onnx, scipy, pydantic, ... made unimportable. The runtime code itself lives in
`medlite.runtime`, shared with the benchmark worker, `medlite predict` and `medlite serve`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from medlite.data.preprocess import IMAGE_SUFFIXES, PreprocessSpec, list_images, normalize
from medlite.runtime import ArtifactError as EdgeError  # a fault the user can fix: one line, exit 2
from medlite.runtime import (  # noqa: F401 - re-exported for callers of the first version
    PREPROCESS_KEY,
    open_artifact,
    peak_rss_mb,
    resolve_threads,
    sidecar_paths,
    activate,
    softmax,
)
from medlite.runtime.adapt import ImageError, load_for_model
from medlite.runtime.onnxrt import INPUT_NAME, OUTPUT_NAME  # noqa: F401


# -- helpers (kept here for callers of the first version; the code lives in medlite.runtime) --


def make_session(model_path: Path, threads: int):
    """An ONNX Runtime CPU session (through the runtime seam)."""
    from medlite.runtime.onnxrt import OnnxArtifact

    return OnnxArtifact(model_path, threads=threads).session


def read_spec(model_path: Path, session=None) -> tuple[PreprocessSpec | None, str]:
    """The preprocessing a model was trained with, and where it came from (file metadata, then sidecar)."""
    art = open_artifact(model_path)
    return art.spec, art.spec_source


def find_images(target: Path, hidden: list[int] | None = None) -> list[Path]:
    """One file, or every image under a folder (recursive, sorted so output order is stable), hidden
    entries (macOS `._*`, `.thumbs/`) left out; `hidden`, when given, gets their count appended."""
    if target.is_file():
        return [target]
    if target.is_dir():
        listing = list_images(target)
        if hidden is not None:
            hidden.append(listing.hidden)
        return listing.files
    raise EdgeError(f"{target}: no such file or folder")


# -- the runner -------------------------------------------------------------------------------


def classify(model_path: Path, target: Path, threads: int = 0, top_k: int = 1, runtime: str | None = None,
             use_threshold: bool = True) -> dict:
    """Classify `target` (an image or a folder) one image at a time, as a device would.

    The runtime comes from the registry (`.onnx` -> ONNX Runtime, `.tflite` -> LiteRT) unless
    named. Unreadable files inside a folder are listed under `skipped`; a single unreadable
    file, or a folder without any readable image, is an error. Each image carries the report of
    how it was adapted to the model's input, with warnings for inputs far from the training data.
    `class` is the decision at the file's operating point (chosen on validation data) when it has
    one and `use_threshold`; `argmax_class` is always given.
    """
    if not model_path.is_file():
        raise EdgeError(f"{model_path}: model file not found")
    if top_k < 1:
        raise EdgeError(f"--top-k {top_k}: must be at least 1")
    hidden: list[int] = []
    images = find_images(target, hidden)
    if not images:
        raise EdgeError(f"{target}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")

    start = time.perf_counter()
    art = open_artifact(model_path, runtime=runtime, threads=threads)
    load_ms = (time.perf_counter() - start) * 1000
    spec = art.require_spec()
    names = list(spec.class_names)
    k = min(top_k, len(names))

    results, skipped = [], []
    for path in images:
        t0 = time.perf_counter()
        try:
            pixels, adaptation = load_for_model(path, spec, art.card)
        except ImageError as err:
            if len(images) == 1 and target.is_file():
                raise EdgeError(f"{path}: not a readable image ({err})") from None
            skipped.append({"path": str(path), "error": str(err)[:200]})
            continue
        x = normalize(pixels[None], spec)
        t1 = time.perf_counter()
        logits = art.run(x)
        t2 = time.perf_counter()
        probs = activate(logits, spec)  # softmax, or a sigmoid per label for a multi-label model
        if probs.shape[1] != len(names):
            raise EdgeError(f"{model_path}: model has {probs.shape[1]} outputs but the spec names {len(names)} classes")
        if spec.multilabel:  # every label: its probability and its decision at its stored threshold
            results.append(_multilabel_result(art, path, probs[0], names, use_threshold, adaptation, t0, t1, t2))
            continue
        decided = int(art.decide(probs)[0]) if use_threshold else int(np.argmax(probs[0]))
        probs = probs[0]
        order = np.argsort(-probs, kind="stable")
        results.append(
            {
                "path": str(path),
                "class": names[decided],
                "class_index": decided,
                "argmax_class": names[int(order[0])],
                "probabilities": {name: float(p) for name, p in zip(names, probs)},
                "top_k": [{"class": names[int(i)], "probability": float(probs[i])} for i in order[:k]],
                "input": adaptation,
                "prep_ms": round((t1 - t0) * 1000, 4),
                "inference_ms": round((t2 - t1) * 1000, 4),
            }
        )
    if not results:
        raise EdgeError(f"{target}: none of the {len(images)} image files could be read")

    inference = np.array([r["inference_ms"] for r in results])
    prep = np.array([r["prep_ms"] for r in results])
    return {
        "model": str(model_path),
        "runtime": art.version(),
        "threads": art.threads,
        "spec_source": art.spec_source,
        "preprocess": spec.to_dict(),
        "operating_point": art.operating_point if use_threshold else None,
        "card": art.card,
        "load_ms": round(load_ms, 3),
        "images": results,
        "skipped": skipped,
        "summary": {
            "count": len(results),
            "skipped": len(skipped),
            "hidden_skipped": hidden[0] if hidden else 0,  # macOS ._* files, .thumbs/: never images to classify
            "warnings": sum(1 for r in results if r["input"]["warnings"]),
            "prep_ms_mean": round(float(prep.mean()), 4),
            "inference_ms_mean": round(float(inference.mean()), 4),
            "inference_ms_p50": round(float(np.percentile(inference, 50)), 4),
            # The first run pays for lazy allocations; the rest is what a device sees in a loop.
            "inference_ms_first": round(float(inference[0]), 4),
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def _multilabel_result(art, path: Path, probs: np.ndarray, names: list[str], use_threshold: bool, adaptation: dict,
                       t0: float, t1: float, t2: float) -> dict:
    """One image of a multi-label model: per label its probability, threshold and 0/1 decision (at the
    file's per-label thresholds; 0.5 with --argmax or when the file stores none)."""
    stored = (art.operating_point or {}).get("thresholds") if use_threshold else None
    thresholds = {n: float(stored[n]) if stored else 0.5 for n in names}
    labels = {n: {"probability": float(p), "threshold": thresholds[n], "positive": bool(p >= thresholds[n])}
              for n, p in zip(names, probs)}
    return {
        "path": str(path),
        "positive_labels": [n for n in names if labels[n]["positive"]],
        "labels": labels,
        "probabilities": {n: float(p) for n, p in zip(names, probs)},
        "decision": "per-label thresholds stored in the model" if stored else "0.5 per label",
        "input": adaptation,
        "prep_ms": round((t1 - t0) * 1000, 4),
        "inference_ms": round((t2 - t1) * 1000, 4),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medlite.edge",
        description="Classify an image (or every image in a folder) with a medlite ONNX or LiteRT model; prints JSON.",
    )
    parser.add_argument("model", type=Path, help="the .onnx or .tflite file (preprocessing read from its metadata or the MODEL.ext.json sidecar)")
    parser.add_argument("target", type=Path, help="an image file or a folder (searched recursively)")
    parser.add_argument("--threads", type=int, default=0, help="runtime threads; 0 = all cores (default)")
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
    try:
        print(json.dumps(report, indent=args.indent or None))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`... | head -1`): it has what it wanted. Point stdout at /dev/null
        # so the interpreter's last flush cannot print a BrokenPipe traceback.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
