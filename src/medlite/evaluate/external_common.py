"""What both forms of `medlite evaluate` (single-label: `evaluate.external`, multi-label:
`evaluate.external_multilabel`) share: the names of the files written, the images of a split at the
model's channels, the seen-in-training check, and strict-JSON cleaning and number formatting."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medlite.errors import UsageError

SPLIT_CHOICES = ("train", "val", "test", "all")
SCHEMA = 1
HASHES_NAME = "train_hashes.npy"  # beside the deployed files: the perceptual hashes of the training images
JSON_NAME, CSV_NAME, PAGE_NAME, FIGURES = "evaluation.json", "predictions.csv", "evaluation.html", "figures"


def seen_in_training(model_file: Path, images: np.ndarray, ids: list[str]) -> tuple[dict | None, str]:
    """How many of `images` the model's training set already held (perceptual hash within the default
    distance), from the hashes its run kept beside its files; (None, why) when there are none."""
    from medlite.data.duplicates import DEFAULT_MAX_DISTANCE, load_hashes
    from medlite.data.duplicates import seen_in_training as seen

    path = Path(model_file).parent / HASHES_NAME
    if not path.is_file():
        return None, f"no {HASHES_NAME} beside {Path(model_file).name} (made by medlite runs since the training hashes were kept)"
    indices = seen(load_hashes(path), images, DEFAULT_MAX_DISTANCE)
    return ({"count": len(indices), "of": int(len(images)), "max_distance": DEFAULT_MAX_DISTANCE,
             "hashes": str(path), "files": [ids[i] for i in indices]},
            f"{len(indices)} of {len(images)} images are within {DEFAULT_MAX_DISTANCE} bits (perceptual hash) "
            f"of a training image")


def colour_images(images: np.ndarray) -> np.ndarray:
    """Per image of a uint8 (N, H, W, 3) batch: True when its channels differ anywhere (a colour image)."""
    if images.shape[3] != 3:
        return np.zeros(len(images), bool)
    return ((images[..., 0] != images[..., 1]) | (images[..., 1] != images[..., 2])).reshape(len(images), -1).any(1)


def match_model_channels(images: np.ndarray, model: int, where: str) -> tuple[np.ndarray, str | None]:
    """The images at the model's channel count, and a note saying what was converted.

    Grey images for a 3-channel model are repeated (as training with `data.channels: 3` does).
    Colour images for a grey model are refused when most of them are colour (colour data: a grey
    model never saw it); when only a few are (grey scans saved as RGB, some with coloured
    annotations, as in BUSI) they are turned grey, as medlite's loaders turn them for a grey model,
    and the note counts them.
    """
    from medlite.data.preprocess import match_channels

    have = images.shape[3]
    if have == model:
        return images, None
    if have == 1:
        return match_channels(images, model), "grey images repeated to the model's 3 channels"
    colour = int(colour_images(images).sum())
    if colour * 2 > len(images):
        raise UsageError(
            f"{where}: {colour} of {len(images)} images are colour (3 channels), but the model takes 1-channel "
            "(grey) input: the channels cannot be mapped"
        )
    note = (f"{colour} of {len(images)} images have colour (e.g. annotations): turned grey (luminance) as the model "
            "takes 1 channel") if colour else None
    return match_channels(images, model), note


def split_images(dataset, split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(images, data labels, image ids, split of each image) of `split` ('all': every split)."""
    from medlite.data import SPLITS

    names = list(SPLITS) if split == "all" else [split]
    parts = [(n, dataset.splits[n]) for n in names if len(dataset.splits[n])]
    if not parts:
        raise UsageError(f"{dataset.origin}: the {split} split has no images")
    images = np.concatenate([p.images for _, p in parts])
    labels = np.concatenate([p.labels for _, p in parts]).astype(np.int64)
    ids = [str(i) for _, p in parts for i in p.ids]
    splits = [n for n, p in parts for _ in range(len(p))]
    return images, labels, ids, splits


def strict_json(value: Any) -> Any:
    """NaN and infinities -> None (strict JSON), numpy scalars -> Python ones, recursively."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt_number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_interval(ci: dict | None, key: str) -> str:
    pair = (ci or {}).get(key)
    return f" ({fmt_number(pair[0])}–{fmt_number(pair[1])})" if pair else ""
