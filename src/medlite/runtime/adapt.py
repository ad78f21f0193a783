"""Reading an image for a deployed model, and saying how it had to be adapted.

Every consumer (edge runner, `medlite predict`, `medlite serve`) reads images through
`load_for_model`, which uses exactly the conversion training used (`convert_image`) and returns,
beside the pixels, what it did: the original size and mode, the resize, the aspect-ratio change,
colour to grey; and warnings when the input is far from the training images (a colour photo for a
grey model, a very different aspect ratio, a tiny image blown up), so a confident answer on an
out-of-distribution input never looks like an ordinary one.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from medlite.data.preprocess import EXIF_ORIENTATION, PreprocessSpec, convert_image, is_grey, upright

# Beyond this aspect-ratio factor (relative to the training images) the resize distorts anatomy.
ASPECT_WARN = 1.5
# Upscaling a source more than this many times its size invents detail the model never saw.
UPSCALE_WARN = 4.0
# Decompression-bomb guard, checked on the header before decoding: 64 megapixels (8k x 8k) is
# above a full-field mammogram (~4k x 5k) yet stops a tiny PNG that would expand to gigabytes.
MAX_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """Not a readable image (reason in the message)."""


def open_image(source: str | Path | bytes | BinaryIO) -> Image.Image:
    """Decode (really decode, not just read the header) an image from a path, bytes or a file object."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    from medlite.data.dicom import DicomError, is_dicom, read_dicom  # numpy + PIL; pydicom only when used

    if is_dicom(source):  # a .dcm file, or an upload with the DICM marker
        try:
            return read_dicom(source)
        except DicomError as err:
            raise ImageError(str(err)) from None
    try:
        image = Image.open(source)  # reads the header only
        if image.width * image.height > MAX_PIXELS:
            raise ImageError(f"image too large to decode safely ({image.width}x{image.height} pixels, "
                             f"limit {MAX_PIXELS // 1_000_000} megapixels)")
        image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large ({err})") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as err:
        msg = str(err) or type(err).__name__
        if isinstance(err, Image.UnidentifiedImageError) or "cannot identify" in msg:
            msg = "not an image file Pillow can decode"
        raise ImageError(msg[:200]) from None
    if image.width < 1 or image.height < 1:
        raise ImageError("empty image (0 pixels)")
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    turned = upright(image)  # as training reads files (medlite.data.preprocess.load_image)
    if turned is not image:
        image.close()
        turned.info["medlite_exif_orientation"] = orientation  # said in the adaptation report
    return turned


def training_shape(card: dict | None, spec: PreprocessSpec) -> tuple[float, int | None]:
    """(aspect ratio w/h, channels) of the training images, from the model card when it says so."""
    dataset = (card or {}).get("dataset") or {}
    aspect = dataset.get("native_aspect")
    native = dataset.get("native_size")
    if not isinstance(aspect, (int, float)) or aspect <= 0:
        if isinstance(native, (list, tuple)) and len(native) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in native):
            aspect = float(native[0]) / float(native[1])
        else:
            aspect = 1.0  # medlite trains on square images
    channels = dataset.get("native_channels")
    return float(aspect), channels if isinstance(channels, int) else None


def adapt(image: Image.Image, spec: PreprocessSpec, card: dict | None = None) -> tuple[np.ndarray, dict]:
    """PIL image -> (uint8 H x W x C at the model's size, adaptation report)."""
    width, height = image.size
    grey_source = is_grey(image)
    pixels = convert_image(image, spec.channels, spec.image_size)
    train_aspect, train_channels = training_shape(card, spec)
    aspect = width / height
    aspect_change = aspect / train_aspect
    grey_model = spec.channels == 1 or train_channels == 1
    report = {
        "original_size": [width, height],
        "original_mode": image.mode,
        "exif_orientation": image.info.get("medlite_exif_orientation"),  # applied before anything else
        "resized_to": [spec.image_size, spec.image_size] if (width, height) != (spec.image_size,) * 2 else None,
        "scale": round(spec.image_size / max(width, height), 4),
        "aspect_ratio": round(aspect, 3),
        "aspect_change": round(aspect_change, 3),
        "colour_to_grey": (not grey_source) and spec.channels == 1,
        "grey_to_colour": grey_source and spec.channels == 3,
        "warnings": [],
    }
    warnings = report["warnings"]
    if not grey_source and grey_model:
        warnings.append(f"colour image ({image.mode}) for a model trained on grey images: "
                        "the answer may not mean anything for this input")
    if abs(math.log(aspect_change)) > math.log(ASPECT_WARN):
        warnings.append(f"aspect ratio {aspect:.2f} differs from the training images' {train_aspect:.2f} "
                        f"by {max(aspect_change, 1 / aspect_change):.1f}x: squashed when resized")
    if spec.image_size / max(width, height) > UPSCALE_WARN:
        warnings.append(f"tiny image ({width}x{height}) enlarged {spec.image_size / max(width, height):.1f}x "
                        f"to {spec.image_size}px")
    return pixels, report


def load_for_model(source: str | Path | bytes | BinaryIO, spec: PreprocessSpec,
                   card: dict | None = None) -> tuple[np.ndarray, dict]:
    """Decode and adapt one image; raises ImageError with the reason when it cannot be read."""
    image = open_image(source)
    try:
        return adapt(image, spec, card)
    finally:
        image.close()
