"""Image preprocessing shared by training, evaluation and the edge runner.

numpy + Pillow only (no torch): the edge runner imports this module on a device
that has neither torch nor medlite's other dependencies. Every image, whatever its
source, goes through `load_image` / `prepare_images`, so the deployed model sees
exactly what the trained one saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# .dcm/.dicom: DICOM, read through medlite.data.dicom (pydicom, the `dicom` extra) by `load_image`.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model expects as input. Stored with every exported model (ONNX metadata)."""

    image_size: int
    channels: int
    mean: float
    std: float
    class_names: tuple[str, ...]
    # What turns the file's logits into probabilities: "softmax" (one class per image) or "sigmoid"
    # (multi-label: one independent probability per label). Every runtime consumer reads it here
    # (`medlite.runtime.activate`), so a deployed file says itself how its outputs are read.
    activation: str = "softmax"

    @property
    def multilabel(self) -> bool:
        return self.activation == "sigmoid"

    def to_dict(self) -> dict:
        data = {**asdict(self), "class_names": list(self.class_names)}
        if self.activation == "softmax":  # the default, left out: single-label files keep their bytes
            del data["activation"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        activation = str(data.get("activation", "softmax"))
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: known: {', '.join(ACTIVATIONS)}")
        return cls(
            image_size=int(data["image_size"]),
            channels=int(data["channels"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
            class_names=tuple(data["class_names"]),
            activation=activation,
        )


ACTIVATIONS = ("softmax", "sigmoid")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float images (common in medical exports) are rescaled to 0..255 before conversion."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    return image


def convert_image(image: Image.Image, channels: int, image_size: int) -> np.ndarray:
    """Any PIL image (L, RGB, RGBA, P, 16-bit) -> uint8 array (image_size, image_size, channels).

    Palette and alpha images go through RGB first (alpha is dropped), so the same
    picture gives the same pixels whatever mode it was saved in.
    """
    image = _to_8bit(image)
    image = image.convert("RGB")
    if channels == 1:
        image = image.convert("L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


EXIF_ORIENTATION = 0x0112


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied (a phone photo taken
    sideways stores the pixels sideways and a tag saying so). Itself when there is no such tag."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def open_image_file(path: str | Path | BinaryIO) -> Image.Image:
    """One image file (or an open binary file object), decoded: DICOM through medlite.data.dicom (its
    window applied; DicomError, a ValueError, with the reason when it cannot be), anything else
    through Pillow, EXIF orientation applied. The caller closes it."""
    if isinstance(path, (str, Path)) and Path(path).suffix.lower() in (".dcm", ".dicom"):
        from medlite.data.dicom import read_dicom  # local: pydicom is an optional extra

        return read_dicom(path)
    image = Image.open(path)
    try:
        image.load()
        turned = upright(image)
    except BaseException:
        image.close()
        raise
    if turned is not image:
        image.close()
    return turned


def load_image(path: str | Path | BinaryIO, channels: int, image_size: int) -> np.ndarray:
    """Read and convert one image file (EXIF orientation applied; DICOM windowed); raises
    OSError/ValueError when the file is not a readable image."""
    with open_image_file(path) as image:
        return convert_image(image, channels, image_size)


def is_hidden(path: Path, root: Path) -> bool:
    """A hidden entry under `root`: a name starting with '.' anywhere below it (macOS `._x.png`
    resource forks, `.DS_Store`, `.thumbs/`, `.git/`). Never images of the data set."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass
class FolderListing:
    """The image files under a folder, and what listing it met: hidden entries left out, files that
    are symbolic links (or under a linked folder), files in sub-folders."""

    files: list[Path] = field(default_factory=list)
    hidden: int = 0
    symlinked: int = 0
    nested: int = 0

    def notes(self, where: str) -> list[str]:
        """What a user should be told about the listing, one sentence each."""
        out = []
        if self.hidden:
            out.append(f"{where}: skipped {self.hidden} hidden files (macOS ._* files, hidden folders such as .thumbs/)")
        if self.symlinked:
            out.append(f"{where}: {self.symlinked} images are symbolic links (or under a linked folder)")
        if self.nested:
            out.append(f"{where}: {self.nested} images are in sub-folders (included)")
        return out

    def add(self, other: "FolderListing") -> None:
        self.files += other.files
        self.hidden += other.hidden
        self.symlinked += other.symlinked
        self.nested += other.nested


def list_images(folder: Path) -> FolderListing:
    """Every image file under `folder` (recursive, sorted), hidden entries left out and counted."""
    listing = FolderListing()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if is_hidden(path, folder):
            listing.hidden += 1
            continue
        listing.files.append(path)
        rel = path.relative_to(folder)
        if len(rel.parts) > 1:
            listing.nested += 1
        if path.is_symlink() or any((folder / Path(*rel.parts[:i])).is_symlink() for i in range(1, len(rel.parts))):
            listing.symlinked += 1
    return listing


def is_grey(image: Image.Image) -> bool:
    """True for single-channel images and for RGB images whose three channels are identical."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return True
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def resize_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, S, S, C), with the same resampling as `convert_image`."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        resized = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR))
        out[i] = resized[:, :, None] if resized.ndim == 2 else resized
    return out


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, H, W, C) with C in {1, 3} -> the requested channel count (grey repeated, or luminance)."""
    have = images.shape[3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=3)
    if have == 3 and channels == 1:
        # The same ITU-R 601 luma transform Pillow's convert("L") applies.
        weights = np.array([299, 587, 114], dtype=np.uint32)
        grey = (images.astype(np.uint32) @ weights + 500) // 1000
        return grey.astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def normalize(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W), scaled to [0, 1] then standardised."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - np.float32(spec.mean)) / np.float32(spec.std)


def prepare_files(paths: list[Path], spec: PreprocessSpec) -> np.ndarray:
    """Image files -> the model's float32 NCHW input, exactly as in training."""
    images = np.stack([load_image(p, spec.channels, spec.image_size) for p in paths])
    return normalize(images, spec)
