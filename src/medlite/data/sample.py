"""What a sample of image files says about a set: grey or colour, and its usual size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from medlite.data.preprocess import is_grey, open_image_file


def native_channels(entries: list[tuple[Path, str]], sample: int = 200) -> int:
    """1 when the images are grey (also grey stored as RGB), else 3; looks at an evenly spaced sample."""
    step = max(1, len(entries) // sample)
    for path, _ in entries[::step]:
        try:
            with open_image_file(path) as image:  # DICOM too
                if not is_grey(image):
                    return 3
        except (OSError, ValueError, UnidentifiedImageError):
            continue
    return 1


def native_size(entries: list[tuple[Path, str]], sample: int = 50) -> int:
    """The most common longer side among a sample of images (the default model input size)."""
    sizes = []
    step = max(1, len(entries) // sample)
    for path, _ in entries[::step]:
        try:
            with open_image_file(path) as image:
                sizes.append(max(image.size))
        except (OSError, ValueError, UnidentifiedImageError):
            continue
    return int(np.bincount(sizes).argmax()) if sizes else 64
