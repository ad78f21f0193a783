"""Shared by the deployment tests: a small exported model, real images, a live uvicorn server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("benign", "malignant")


def make_model(folder: Path, card: dict | None = None, metadata: dict | None = None) -> Path:
    """A medlite student exported to ONNX (weights spread so predictions vary), with an optional card."""
    import torch

    from medlite.data.preprocess import PreprocessSpec
    from medlite.export.onnx import export_onnx
    from medlite.models import create
    from medlite.runtime import CARD_KEY, write_sidecar

    torch.manual_seed(0)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, CLASSES)
    model = create("medlite_dsconv_tiny", num_classes=2, in_chans=1, img_size=28)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    path = folder / "student.onnx"
    export_onnx(model, spec, path, {k: v for k, v in (metadata or {}).items()})
    if card is not None:
        write_sidecar(path, {CARD_KEY: card})
    return path


def write_images(folder: Path, npz: dict, count: int) -> list[Path]:
    """Real BreastMNIST test images as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(npz["test_images"][i]).save(path)
        paths.append(path)
    return paths


def reference_probs(model: Path, paths: list[Path]) -> np.ndarray:
    """Independent of medlite.runtime: Pillow + numpy + a bare ONNX Runtime session."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    xs = []
    for p in paths:
        img = Image.open(p).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
        xs.append((np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5)
    logits = sess.run(None, {sess.get_inputs()[0].name: np.stack(xs)[:, None]})[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app):
    """A real uvicorn server on 127.0.0.1 (free port) in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
