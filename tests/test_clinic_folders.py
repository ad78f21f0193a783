"""A clinic's folders (issue 18): EXIF-rotated phone photos, macOS `._*` files and hidden folders,
what `data.skip_bad` left out, symlinked and nested files; made from shared BUSI images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlite.data import load_dataset
from medlite.data.folder import FolderData
from medlite.data.preprocess import PreprocessSpec, load_image

SRC = Path(__file__).resolve().parents[1] / "src"
ORIENTATION = 0x0112


def rotated_jpeg(source: Path, out: Path) -> np.ndarray:
    """`source` stored sideways (as a phone held sideways stores it) with EXIF orientation 6 ("rotate
    90 degrees clockwise to view"); returns the upright grey pixels, read the same way."""
    upright = Image.open(source).convert("L").crop((0, 0, 128, 96))  # not square: a sideways reading shows
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 96 x 128, counter-clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(out, format="JPEG", quality=95, exif=exif.tobytes())
    reference = out.with_name("upright.jpg")
    upright.save(reference, format="JPEG", quality=95)
    return load_image(reference, 1, 32)


def test_exif_orientation_is_applied_in_training_and_deployment(tmp_path, busi_root):
    from medlite.runtime.adapt import load_for_model

    photo = tmp_path / "phone.jpg"
    expected = rotated_jpeg(busi_root / "benign" / "benign (1).png", photo)
    read = load_image(photo, 1, 32)  # training, evaluation, the bench, explain
    assert np.abs(read.astype(int) - expected).mean() < 3
    sideways = np.asarray(Image.open(photo).convert("L").resize((32, 32), Image.Resampling.BILINEAR))
    assert np.abs(sideways.astype(int) - expected[..., 0]).mean() > 10  # the test can tell the difference
    pixels, report = load_for_model(photo, PreprocessSpec(32, 1, 0.5, 0.5, ("a", "b")))  # predict, serve, edge
    assert np.array_equal(pixels, read)
    assert report["exif_orientation"] == 6 and report["original_size"] == [128, 96]


def clinic_folder(tmp_path: Path, busi_root: Path, per_class: int = 8) -> Path:
    """Three BUSI classes, plus what a Mac and a viewer leave there, a nested folder and a symlink."""
    root = tmp_path / "clinic"
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(1, per_class + 1):
            shutil.copy(busi_root / cls / f"{cls} ({i}).png", root / cls / f"{cls}_{i}.png")
            (root / cls / f"._{cls}_{i}.png").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
        (root / cls / ".thumbs").mkdir()
        shutil.copy(busi_root / cls / f"{cls} (1).png", root / cls / ".thumbs" / "t.png")
    (root / "benign" / "2024").mkdir()
    shutil.copy(busi_root / "benign" / "benign (20).png", root / "benign" / "2024" / "late.png")
    os.symlink(busi_root / "benign" / "benign (21).png", root / "benign" / "linked.png")
    return root


def test_hidden_files_are_skipped_and_counted_symlinks_and_nested_reported(tmp_path, busi_root):
    root = clinic_folder(tmp_path, busi_root)
    ds = load_dataset(FolderData(root=str(root), image_size=16), root, seed=0)
    assert sum(ds.summary()["images"].values()) == 3 * 8 + 2
    assert ds.summary()["files"] == {"hidden_skipped": 3 * 8 + 3, "symlinked": 1, "nested": 1}
    assert any("skipped 27 hidden files" in w for w in ds.warnings), ds.warnings
    # `medlite data` says so
    recipe = tmp_path / "clinic.yaml"
    recipe.write_text(f"data: {{source: folder, root: {root}, image_size: 16}}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "medlite.cli", "data", str(recipe)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "27 hidden skipped" in result.stdout and "1 symlinked" in result.stdout and "1 in sub-folders" in result.stdout


def test_predict_edge_and_bench_leave_hidden_files_out(tmp_path, busi_root):
    from medlite.bench.runner import find_images as bench_images
    from medlite.deploy.predict import expand_inputs
    from medlite.edge import find_images as edge_images

    root = clinic_folder(tmp_path, busi_root, per_class=2)
    hidden: list[int] = []
    files, missing = expand_inputs([root], hidden)
    assert len(files) == 3 * 2 + 2 and not missing and hidden == [3 * 2 + 3]
    assert not any(part.startswith(".") for f in files for part in f.relative_to(root).parts)
    assert edge_images(root) == files and bench_images(root, limit=100) == files


def test_skip_bad_records_every_skipped_file_and_why(tmp_path, busi_root):
    root = clinic_folder(tmp_path, busi_root)
    (root / "normal" / "scan_broken.png").write_bytes(b"not a png at all")
    with pytest.raises(Exception, match="scan_broken.png: unreadable image"):
        load_dataset(FolderData(root=str(root), image_size=16), root, seed=0)
    ds = load_dataset(FolderData(root=str(root), image_size=16, skip_bad=True), root, seed=0)
    summary = ds.summary()
    assert summary["skipped_images"] == 1
    assert summary["skipped"] == [{"file": str(root / "normal" / "scan_broken.png"),
                                   "reason": "UnidentifiedImageError: not an image file Pillow can decode"}]
    assert any("1 unreadable images skipped (data.skip_bad), e.g." in w and "scan_broken.png" in w for w in ds.warnings)
