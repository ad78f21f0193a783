"""DICOM files (issue 18), made with pydicom from shared BUSI images: the modality rescale, the
file's window, MONOCHROME1, an undecodable file listed with its reason, and no patient tag in
anything medlite writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom", reason="pydicom not installed (pip install 'medlite[dicom]')")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

from medlite.data import load_dataset  # noqa: E402
from medlite.data.folder import FolderData  # noqa: E402
from medlite.data.preprocess import load_image  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "ID-83921", "PatientBirthDate": "19700101"}


def grey_of(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png).convert("L"), np.uint8)


def write_dicom(path: Path, grey: np.ndarray, *, photometric: str = "MONOCHROME2", compressed: bool = False) -> Path:
    """16-bit stored values 4*g + 100 with rescale 0.5 / -50 (modality values 2*g) and a window over
    0..510: a correct reader gives back g; one that skips the rescale or the window does not."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000 if compressed else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-50"
    ds.WindowCenter, ds.WindowWidth = "255.5", "511"
    stored = grey.astype(np.uint16) * 4 + 100
    if compressed:  # a JPEG 2000 file: needs a decoder plug-in medlite does not install
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + stored.tobytes()[:64]])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_is_rescaled_windowed_and_monochrome1_inverted(tmp_path, busi_root):
    grey = grey_of(busi_root / "benign" / "benign (1).png")
    mono2 = load_image(write_dicom(tmp_path / "a.dcm", grey), 1, grey.shape[0])[..., 0]
    assert np.abs(mono2.astype(int) - grey).max() <= 1
    mono1 = load_image(write_dicom(tmp_path / "b.dcm", grey, photometric="MONOCHROME1"), 1, grey.shape[0])[..., 0]
    assert np.abs(mono1.astype(int) - (255 - grey.astype(int))).max() <= 1


def test_a_dicom_folder_trains_and_predicts_without_a_patient_tag_anywhere(tmp_path, busi_root):
    root = tmp_path / "clinic"
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(1, 9):
            write_dicom(root / cls / f"{cls}_{i}.dcm", grey_of(busi_root / cls / f"{cls} ({i}).png"))
    ds = load_dataset(FolderData(root=str(root), image_size=32), root, seed=0)
    assert sum(ds.summary()["images"].values()) == 16 and ds.channels == 1

    from deploy_helpers import make_model

    model = make_model(tmp_path)
    write_dicom(root / "benign" / "compressed.dcm", grey_of(busi_root / "benign" / "benign (9).png"), compressed=True)
    out = tmp_path / "predictions.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "medlite.cli", "predict", str(model), str(root), "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "16 classified, 1 unreadable" in result.stderr
    assert "compressed.dcm" in result.stderr and "transfer syntax JPEG 2000" in result.stderr
    written = out.read_text() + result.stdout + result.stderr
    assert "benign_1.dcm" in out.read_text()
    for value in PATIENT.values():
        assert value not in written and value.split("^")[0] not in written
