"""DICOM files (`.dcm`), the format hospital systems export, read as the 8-bit image a person
would see on a viewer: the modality LUT (or rescale slope / intercept) first, then the file's own
VOI LUT or window (centre / width), MONOCHROME1 inverted so that bright is always dense.

pydicom is an optional extra (`pip install 'medlite[dicom]'`), imported here only, when a DICOM
file is read. Nothing from the file's header leaves this module except pixels and, for a file
that cannot be decoded, a reason naming its transfer syntax: never a patient tag (name, id, birth
date), so none reaches a log, a CSV, the report or a model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")
INSTALL_HINT = "pip install 'medlite[dicom]'"


class DicomError(ValueError):
    """A DICOM file that cannot be read as an image; the message says why (no patient data)."""


def is_dicom(source: str | Path | bytes | BinaryIO) -> bool:
    """A DICOM file by its suffix, or (bytes and file objects, e.g. an upload) by the `DICM` marker
    after the 128-byte preamble."""
    if isinstance(source, (str, Path)):
        return Path(source).suffix.lower() in DICOM_SUFFIXES
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[128:132]) == b"DICM"
    try:
        position = source.tell()
        source.seek(128)
        marker = source.read(4)
        source.seek(position)
    except (OSError, AttributeError, ValueError):
        return False
    return marker == b"DICM"


def read_dicom(source: str | Path | BinaryIO) -> Image.Image:
    """The file's (first frame's) image as a PIL image: mode L (grey, windowed) or RGB."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise DicomError(f"reading DICOM needs pydicom ({INSTALL_HINT})") from None
    try:
        ds = pydicom.dcmread(source)
    except InvalidDicomError:
        raise DicomError("not a valid DICOM file") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise DicomError(f"unreadable DICOM file ({type(err).__name__})") from None
    if "PixelData" not in ds:
        raise DicomError("DICOM file without pixel data (not an image)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - any decoder failure: the transfer syntax says which handler is missing
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        text = " ".join(str(err).split())
        why = ("no installed pixel-data handler decodes it (compressed syntaxes need e.g. "
               "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg)") if "plugins" in text or "handler" in text \
            else text[:120]
        raise DicomError(f"cannot decode the pixel data (transfer syntax {name}): {why}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # a multi-frame file: the first frame
    if samples == 3:  # colour (pydicom has converted YBR to RGB)
        return Image.fromarray(_to_uint8(pixels.astype(np.float64)), mode="RGB")
    if pixels.ndim != 2:
        raise DicomError(f"unsupported DICOM image shape {tuple(pixels.shape)}")
    values = apply_modality_lut(pixels, ds).astype(np.float64)  # stored values -> modality units (e.g. HU)
    if "VOILUTSequence" in ds:
        grey = _to_uint8(apply_voi_lut(values, ds, index=0).astype(np.float64))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        grey = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        grey = _to_uint8(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1: the lowest value is white
    return Image.fromarray(grey, mode="L")


def _first(value) -> float:
    """A window attribute may hold several windows (multi-valued): the first is the default one."""
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The linear VOI window of DICOM PS3.3 C.11.2.1.2, to 0..255."""
    width = max(width, 1.0)
    scaled = ((values - (center - 0.5)) / (width - 1.0 if width > 1 else 1.0) + 0.5) * 255.0
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return ((values - low) / (high - low) * 255.0).round().astype(np.uint8)
