"""Duplicate and near-duplicate images across the splits of a dataset, and what a model has seen.

Two hashes per image, both 8 bytes:
- the *exact* hash: BLAKE2b of the decoded pixels (and their shape). Equal hashes are confirmed
  pixel by pixel before a pair is called exact.
- the *perceptual* hash: imagehash's pHash (the 8x8 low frequencies of a 32x32 DCT against their
  median), packed into a uint64. Re-encoding, resizing or a small brightness change moves it by a
  few bits at most; the Hamming distance between two hashes is the number of differing bits.

A copy of a test image in the training split inflates every test figure; `find_duplicates` lists
such pairs. `training_hashes` gives the perceptual hashes of a run's training images (8 bytes an
image: store them with the model, `save_hashes`), and `seen_in_training` says which images of
another dataset the model has already seen (external validation).

Hashes are of the images as the dataset holds them (resized to the model input size, converted
to its channels). pHash resizes to 32x32 itself, so perceptual hashes of the same picture at
28 and 64 px stay a few bits apart; exact hashes only match at the same size.

Flat images (every pixel alike: a blank or damaged file) all share a degenerate pHash; they are
left out of the near-duplicate search (their exact copies are still found) and counted instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlite.errors import DataError

if TYPE_CHECKING:
    from medlite.data.dataset import Dataset, Split

# Bits a perceptual hash may differ by and still be called a near duplicate. Measured on BreastMNIST
# (28 px): train/test pairs within 4 bits differ by 0-4 grey levels per pixel on average (the same
# frame re-saved or re-cropped; BUSI holds such copies), pairs at 6-10 bits by 3-10, random pairs by 44.
DEFAULT_MAX_DISTANCE = 4
# Pairs (and within-split copy groups) kept in a report, per split pair: every pair is counted, but
# a degenerate dataset (thousands of identical frames) must not put millions of rows in results.json.
MAX_LISTED = 500
_CHUNK = 1 << 22  # hash comparisons per block of the brute-force search (32 MiB of uint64)
PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype != np.uint8:
        raise DataError(f"image hashes: expected uint8 images (N, H, W[, 1|3]), got {images.dtype} {images.shape}")
    return images


def image_hashes(images: np.ndarray) -> np.ndarray:
    """Perceptual hashes (imagehash pHash, 64 bits) of uint8 images (N, H, W[, C]): uint64 (N,)."""
    # local: imagehash imports scipy and PyWavelets; the runtime on a device never hashes.
    import imagehash
    from PIL import Image

    images = _as_nhwc(images)
    bits = np.zeros((len(images), 64), bool)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        bits[i] = imagehash.phash(pil, hash_size=8).hash.reshape(64)
    # Row-major bits, most significant first: the same integer as int(str(imagehash.phash(...)), 16).
    return np.packbits(bits, axis=1).view(">u8").reshape(len(images)).astype(np.uint64)


def exact_hashes(images: np.ndarray) -> np.ndarray:
    """Content hashes of the decoded pixels (BLAKE2b, 8 bytes, shape included): uint64 (N,)."""
    images = _as_nhwc(images)
    shape = repr(images.shape[1:]).encode()
    out = np.empty(len(images), np.uint64)
    for i, image in enumerate(images):
        digest = hashlib.blake2b(shape, digest_size=8)
        digest.update(np.ascontiguousarray(image).data)
        out[i] = int.from_bytes(digest.digest(), "big")
    return out


def flat_images(images: np.ndarray) -> np.ndarray:
    """Boolean (N,): images whose pixels are all equal (their pHash carries no information)."""
    images = _as_nhwc(images)
    if len(images) == 0:
        return np.zeros(0, bool)
    flat = images.reshape(len(images), -1)
    return flat.min(axis=1) == flat.max(axis=1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


def close_pairs(a: np.ndarray, b: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with hamming(a[i], b[j]) <= max_distance: (i, j, distance), ordered by i then j.

    Brute force in blocks (a few seconds for 100k x 20k hashes): exact, and no index to keep.
    """
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    found_i, found_j, found_d = [], [], []
    if len(a) and len(b):
        step = max(1, _CHUNK // len(b))
        for start in range(0, len(a), step):
            dist = hamming(a[start:start + step, None], b[None, :])
            i, j = np.nonzero(dist <= max_distance)
            found_i.append(i + start)
            found_j.append(j)
            found_d.append(dist[i, j])
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.concatenate(found_d).astype(np.int64))


@dataclass(frozen=True)
class DuplicatePair:
    """Image `index_a` of `split_a` and image `index_b` of `split_b` are copies (`exact`) or close (`near`)."""

    kind: str  # "exact" | "near"
    split_a: str
    index_a: int
    id_a: str
    split_b: str
    index_b: int
    id_b: str
    distance: int  # perceptual-hash Hamming distance (0..64)
    same_label: bool


@dataclass(frozen=True)
class CopyGroup:
    """Identical images within one split (the first is the original, the rest are copies)."""

    split: str
    indices: tuple[int, ...]
    ids: tuple[str, ...]
    same_label: bool


@dataclass
class SplitPairCounts:
    exact: int = 0  # exact pairs
    near: int = 0  # near pairs that are not exact
    images_b_with_copy: int = 0  # images of split_b with an exact or near copy in split_a (e.g. test images seen in train)
    label_conflicts: int = 0  # pairs whose labels differ
    listed: int = 0  # pairs kept in `pairs`


@dataclass
class DuplicateReport:
    max_distance: int
    pairs: list[DuplicatePair] = field(default_factory=list)  # cross-split, at most MAX_LISTED per split pair
    counts: dict[str, SplitPairCounts] = field(default_factory=dict)  # "train/test" -> counts
    within: list[CopyGroup] = field(default_factory=list)  # exact copies inside a split, at most MAX_LISTED per split
    within_copies: dict[str, int] = field(default_factory=dict)  # split -> images that are copies of an earlier one
    flat_images: dict[str, int] = field(default_factory=dict)  # split -> images left out of the near search
    # split -> the perceptual hash of every image (the training ones are what a run keeps with its model)
    hashes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def cross_split(self) -> int:
        """Cross-split pairs, exact and near."""
        return sum(c.exact + c.near for c in self.counts.values())

    @property
    def truncated(self) -> bool:
        return any(c.listed < c.exact + c.near for c in self.counts.values())

    def to_dict(self) -> dict:
        return {
            "max_distance": self.max_distance,
            "counts": {k: asdict(v) for k, v in self.counts.items()},
            "within_split_copies": dict(self.within_copies),
            "flat_images": dict(self.flat_images),
            "truncated": self.truncated,
            "pairs": [asdict(p) for p in self.pairs],
            "within_split": [asdict(g) | {"indices": list(g.indices), "ids": list(g.ids)} for g in self.within],
        }


def _same_label(labels_a: np.ndarray, i: int, labels_b: np.ndarray, j: int) -> bool:
    return bool(np.array_equal(labels_a[i], labels_b[j]))  # multi-label rows too


def _exact_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def find_duplicates(dataset: Dataset, max_distance: int = DEFAULT_MAX_DISTANCE, max_listed: int = MAX_LISTED) -> DuplicateReport:
    """Exact and near-duplicate pairs across train/val/test, and exact copies within each split."""
    if not 0 <= max_distance <= 64:
        raise DataError(f"duplicates: max_distance must be 0..64 bits, got {max_distance}")
    splits: dict[str, Split] = {name: dataset.splits[name] for name in ("train", "val", "test") if name in dataset.splits}
    exact = {name: exact_hashes(s.images) for name, s in splits.items()}
    percept = {name: image_hashes(s.images) for name, s in splits.items()}
    flat = {name: flat_images(s.images) for name, s in splits.items()}
    report = DuplicateReport(max_distance=max_distance, flat_images={n: int(f.sum()) for n, f in flat.items()},
                             hashes=percept)

    for a, b in PAIRS:
        if a not in splits or b not in splits:
            continue
        sa, sb = splits[a], splits[b]
        counts = SplitPairCounts()
        found: dict[tuple[int, int], tuple[str, int]] = {}
        # Exact: equal content hashes, confirmed on the pixels (a 64-bit collision is not a copy).
        index_b: dict[int, list[int]] = {}
        for j, h in enumerate(exact[b].tolist()):
            index_b.setdefault(h, []).append(j)
        for i, h in enumerate(exact[a].tolist()):
            for j in index_b.get(h, ()):
                if _exact_equal(sa.images[i], sb.images[j]):
                    found[(i, j)] = ("exact", int(hamming(percept[a][i], percept[b][j])))
        # Near: perceptual hashes within max_distance, flat images left out.
        keep_a, keep_b = np.flatnonzero(~flat[a]), np.flatnonzero(~flat[b])
        ii, jj, dd = close_pairs(percept[a][keep_a], percept[b][keep_b], max_distance)
        for i, j, d in zip(keep_a[ii].tolist(), keep_b[jj].tolist(), dd.tolist()):
            found.setdefault((i, j), ("near", int(d)))
        seen_b = set()
        for (i, j), (kind, d) in sorted(found.items(), key=lambda item: (item[1][0] != "exact", item[1][1], item[0])):
            same = _same_label(sa.labels, i, sb.labels, j)
            counts.exact += kind == "exact"
            counts.near += kind == "near"
            counts.label_conflicts += not same
            seen_b.add(j)
            if counts.listed < max_listed:
                report.pairs.append(DuplicatePair(kind, a, i, str(sa.ids[i]), b, j, str(sb.ids[j]), d, same))
                counts.listed += 1
        counts.images_b_with_copy = len(seen_b)
        report.counts[f"{a}/{b}"] = counts

    for name, split in splits.items():
        groups: dict[int, list[int]] = {}
        for i, h in enumerate(exact[name].tolist()):
            groups.setdefault(h, []).append(i)
        copies = 0
        for members in groups.values():
            if len(members) < 2:
                continue
            # Confirm on the pixels: members equal to the first (a collision would form its own group).
            same = [m for m in members if _exact_equal(split.images[members[0]], split.images[m])]
            if len(same) < 2:
                continue
            copies += len(same) - 1
            if sum(g.split == name for g in report.within) < max_listed:
                labels_agree = all(_same_label(split.labels, same[0], split.labels, m) for m in same[1:])
                report.within.append(CopyGroup(name, tuple(same), tuple(str(split.ids[m]) for m in same), labels_agree))
        report.within_copies[name] = copies
    return report


def training_hashes(dataset: Dataset, splits: tuple[str, ...] = ("train",)) -> np.ndarray:
    """Perceptual hashes of the images a model was trained on (uint64, 8 bytes an image): keep them with the model."""
    parts = [image_hashes(dataset.splits[name].images) for name in splits]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def seen_in_training(hashes_of_training: np.ndarray, images: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[int]:
    """Indices of `images` (uint8 N,H,W[,C]) within `max_distance` bits of a training hash, ascending.

    Flat images are never counted as seen: every blank frame shares one pHash.
    """
    images = _as_nhwc(images)
    hashes = image_hashes(images)
    keep = np.flatnonzero(~flat_images(images))
    ii, _, _ = close_pairs(hashes[keep], np.asarray(hashes_of_training, np.uint64), max_distance)
    return sorted(set(keep[ii].tolist()))


def save_hashes(path: Path, hashes: np.ndarray) -> Path:
    """Write hashes as a little-endian uint64 .npy file, atomically."""
    from medlite.runstate import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(hashes, "<u8"), allow_pickle=False)
    return path


def load_hashes(path: Path) -> np.ndarray:
    """Hashes written by `save_hashes` (a DataError naming the file when it is not one)."""
    try:
        hashes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable hash file ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(hashes, np.ndarray) or hashes.ndim != 1 or hashes.dtype != np.dtype("<u8"):
        raise DataError(f"{path}: expected a 1-D uint64 array of image hashes")
    return hashes.astype(np.uint64)


# -- known faults of official splits ---------------------------------------------------------

_DERMAMNIST = (
    "dermamnist: the official MedMNIST split puts images of the same lesion in train and test "
    "(641 lesions shared between train and test; Abhishek et al., 'Investigating the Quality of "
    "DermaMNIST and Fitzpatrick17k', 2024): test figures are optimistic. For lesion-disjoint splits use "
    "the HAM10000 table source with group: lesion_id (`medlite run ham10000`)"
)


def known_split_warnings(dataset_or_cfg: object) -> list[str]:
    """Warnings about published faults of an official split, for a loaded Dataset or a recipe's data section."""
    source = getattr(dataset_or_cfg, "source", None)
    if source != "medmnist":
        return []
    flag = getattr(dataset_or_cfg, "flag", None) or getattr(dataset_or_cfg, "name", "")
    flag = str(flag).lower().split("_")[0]  # a Dataset's name carries the size: dermamnist_64
    return [_DERMAMNIST] if flag == "dermamnist" else []
