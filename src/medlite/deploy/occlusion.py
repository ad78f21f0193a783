"""Occlusion sensitivity on the deployed file (Zeiler & Fergus, "Visualizing and Understanding
Convolutional Networks", ECCV 2014): slide a patch of the mean intensity over the input and record
how much the predicted class's probability drops. Black-box: it needs only `Artifact.run`, so the
map explains the exact file that is deployed (ONNX or LiteRT, int8 included), not a PyTorch twin.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from medlite.runtime import Artifact


def occlusion_map(art: Artifact, x: np.ndarray, target: int, patch: int | None = None,
                  stride: int | None = None, multilabel: bool = False) -> np.ndarray:
    """(H, W) map in [0, 1]: mean drop of the target's logit margin when a patch covering the pixel is hidden.

    `x` is one normalised input (1, C, H, W). The patch holds 0, i.e. the dataset mean after
    normalisation, so the occluder is "average tissue" rather than a black hole. The score is the
    margin logit(target) - max other logit, not the probability: a confident model's probability
    stays at 1.00 under every occlusion and would give a blank map. A multi-label model's labels do
    not compete: the score is the target label's own logit.
    """
    _, _, h, w = x.shape
    patch = patch or max(2, round(h / 7))
    stride = stride or max(1, patch // 2)
    def margin(logits: np.ndarray) -> np.ndarray:
        if multilabel:
            return logits[:, target]
        others = np.delete(logits, target, axis=1)
        return logits[:, target] - others.max(axis=1)

    base = margin(art.run(x).astype(np.float64))[0]
    tops = list(range(0, max(h - patch, 0) + 1, stride))
    lefts = list(range(0, max(w - patch, 0) + 1, stride))
    if tops[-1] != h - patch:
        tops.append(h - patch)
    if lefts[-1] != w - patch:
        lefts.append(w - patch)
    boxes = [(t, l) for t in tops for l in lefts]
    batch = np.repeat(x, len(boxes), axis=0)
    for i, (t, l) in enumerate(boxes):
        batch[i, :, t : t + patch, l : l + patch] = 0.0
    probs = margin(art.run(batch, batch_size=64).astype(np.float64))
    heat = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    for (t, l), p in zip(boxes, probs):
        heat[t : t + patch, l : l + patch] += base - p
        count[t : t + patch, l : l + patch] += 1
    heat = np.clip(heat / np.maximum(count, 1), 0, None)
    peak = heat.max()
    return heat / peak if peak > 0 else heat


# A perceptually ordered dark-blue -> red -> yellow ramp (no matplotlib on a device); the page's
# colour scale is drawn from the same stops (`css_gradient`).
COLOUR_STOPS = ((0, 0, 40), (40, 0, 120), (180, 20, 60), (250, 120, 0), (255, 240, 80))


def css_gradient() -> str:
    """The heat-map's colour ramp as a CSS linear-gradient, low (left) to high (right)."""
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in COLOUR_STOPS) + ")"


def _colormap(values: np.ndarray) -> np.ndarray:
    """Heat values in [0, 1] -> RGB along `COLOUR_STOPS`."""
    stops = np.array(COLOUR_STOPS, np.float64)
    pos = np.clip(values, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def overlay_png(pixels: np.ndarray, heat: np.ndarray, size: int = 224, alpha: float = 0.45) -> str:
    """The model's input image with the heat-map on top, as a base64 PNG (for a data: URL)."""
    grey = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels.mean(axis=2)
    base = Image.fromarray(grey.astype(np.uint8)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    heat_img = Image.fromarray((heat * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    colour = _colormap(np.asarray(heat_img, np.float64) / 255.0)
    mixed = (np.asarray(base, np.float64) * (1 - alpha) + colour * alpha).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(mixed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
