"""brainmri/data/scanner.py: DICOM and NIfTI files written here (pydicom, nibabel) from the bundled
demo JPEGs read back as the same slices, and predict the same class as the JPEGs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from brainmri.data import scanner
from brainmri.data.scanner import Slice, find_slices, window_to_uint8
from brainmri.errors import DatasetError, MissingExtra

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "brainmri" / "data" / "demo" / "Testing"
JPEGS = [sorted((DEMO / c).glob("*.jpg"))[0] for c in ("glioma", "meningioma", "pituitary")]


def jpeg(k: int) -> np.ndarray:
    return np.asarray(Image.open(JPEGS[k]).convert("L"))


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    rescale: Optional[tuple[float, float]] = None,
    window: Optional[tuple[float, float]] = (128, 256),
    instance: int = 1,
    series: str = "1.2.3",
) -> Path:
    """An MR image (one frame, or several for a (F, H, W) array) as a scanner would write it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.SeriesInstanceUID, ds.InstanceNumber = series, instance
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def model():
    """brainmri 0.1's demo run (tests/fixtures/run_v1): a real trained model, loaded once."""
    from brainmri.evaluation.trained import load_trained

    return load_trained(str(REPO / "tests" / "fixtures" / "run_v1"), None, torch.device("cpu"))


def same_prediction(model, slice_: Slice, k: int) -> None:
    from brainmri.evaluation.trained import predict_probs

    transform = model.transform()
    expected = predict_probs(model, transform(Image.open(JPEGS[k]).convert("RGB"))[None])
    got = predict_probs(model, transform(slice_.load(model.channels))[None])
    assert int(got.argmax()) == int(expected.argmax()) and torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("case", ["monochrome2", "monochrome1", "rescaled_16bit"])
def test_a_dicom_slice_reads_back_as_its_jpeg(tmp_path, model, case):
    pixels = jpeg(0)
    if case == "monochrome2":
        path = write_dicom(tmp_path / "a.dcm", pixels)
    elif case == "monochrome1":  # white is low: stored inverted, read back upright
        path = write_dicom(tmp_path / "a.dcm", (255 - pixels).astype(np.uint8), photometric="MONOCHROME1")
    else:  # 16-bit stored values, rescaled to the intensities by slope and intercept
        stored = (pixels.astype(np.uint16) * 40 + 1000).astype(np.uint16)
        path = write_dicom(tmp_path / "a.dcm", stored, rescale=(0.025, -25.0))
    (only,) = find_slices([str(path)])
    assert (only.name, only.kind) == (str(path), "dicom")
    assert np.array_equal(np.asarray(only.load(1)), pixels)
    same_prediction(model, only, 0)


def test_without_a_window_a_slice_spans_its_own_range(tmp_path):
    stored = (jpeg(1).astype(np.uint16) * 7 + 300).astype(np.uint16)  # 16-bit, no window in the header
    (only,) = find_slices([str(write_dicom(tmp_path / "b.dcm", stored, window=None))])
    got = np.asarray(only.load(1))
    assert got.min() == 0 and got.max() == 255
    assert np.array_equal(got, window_to_uint8(jpeg(1), None, None))


def test_a_multi_frame_file_is_one_slice_per_frame(tmp_path, model):
    frames = np.stack([jpeg(k) for k in range(3)])
    path = write_dicom(tmp_path / "multi.dcm", frames)
    slices = find_slices([str(path)])
    assert [s.name for s in slices] == [f"{path}#frame{k}" for k in range(3)]
    assert {s.volume for s in slices} == {str(path)}
    for k, s in enumerate(slices):
        assert np.array_equal(np.asarray(s.load(1)), jpeg(k))
        same_prediction(model, s, k)


def test_a_series_folder_is_read_in_instance_order(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for name, instance, k in (("a.dcm", 3, 2), ("b.dcm", 1, 0), ("IM0002", 2, 1)):  # suffix-less, as scanners write
        write_dicom(series / name, jpeg(k), instance=instance)
    slices = find_slices([str(series)])
    assert [Path(s.name).name for s in slices] == ["b.dcm", "IM0002", "a.dcm"]
    assert all(np.array_equal(np.asarray(s.load(1)), jpeg(k)) for k, s in enumerate(slices))
    assert {s.volume for s in slices} == {str(series)}


def test_bad_dicom_files_are_one_line_naming_the_file(tmp_path):
    header = write_dicom(tmp_path / "header.dcm", jpeg(0))
    from pydicom import dcmread

    ds = dcmread(header)
    del ds.PixelData
    ds.save_as(header, enforce_file_format=True)
    with pytest.raises(DatasetError, match=r"header.dcm: DICOM file without pixel data") as caught:
        find_slices([str(header)])
    assert "\n" not in str(caught.value)
    compressed = write_dicom(tmp_path / "jpeg2000.dcm", jpeg(0))
    ds = dcmread(compressed)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 Lossless, but not decodable bytes
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(compressed, enforce_file_format=True)
    with pytest.raises(DatasetError, match=r"jpeg2000.dcm: cannot decode its pixel data, transfer syntax 1.2.840") as c:
        find_slices([str(compressed)])
    assert "\n" not in str(c.value)


def nifti(path: Path, images: list[np.ndarray], affine: np.ndarray, display: bool = True) -> Path:
    """A volume whose axial slice k shows images[k] (RAS+ when ``affine`` is the identity); int16
    with a header slope and intercept, so the reader must apply them."""
    volume = np.stack([np.flipud(im).T for im in images], axis=2).astype(np.float64)
    if affine[0, 0] < 0:  # stored left-to-right: the canonical reorientation must flip it back
        volume = volume[::-1]
    image = nib.Nifti1Image(np.round((volume - 10) * 2).astype(np.int16), affine)
    image.header.set_slope_inter(0.5, 10)
    if display:
        image.header["cal_min"], image.header["cal_max"] = 0, 255
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("affine", [np.eye(4), np.diag([-1.0, 1.0, 1.0, 1.0])], ids=["ras", "las"])
def test_a_nifti_volume_is_cut_into_canonical_axial_slices(tmp_path, model, affine):
    path = nifti(tmp_path / "vol.nii.gz", [jpeg(k) for k in range(3)], affine)
    slices = find_slices([str(path)])
    assert [s.name for s in slices] == [f"{path}#z{k:03d}" for k in range(3)]
    assert {s.volume for s in slices} == {str(path)} and slices[1].stem == "vol_001"
    for k, s in enumerate(slices):
        assert np.array_equal(np.asarray(s.load(1)), jpeg(k))
        same_prediction(model, s, k)


def test_nifti_without_a_display_range_uses_the_volumes_range_and_refuses_4d(tmp_path):
    path = nifti(tmp_path / "vol.nii", [jpeg(0), jpeg(1)], np.eye(4), display=False)
    first = np.asarray(find_slices([str(path)])[0].load(1))
    assert first.max() <= 255 and first.shape == jpeg(0).shape
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(tmp_path / "fmri.nii"))
    with pytest.raises(DatasetError, match=r"fmri.nii: a 4-D volume"):
        find_slices([str(tmp_path / "fmri.nii")])


def test_a_missing_reader_names_its_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", jpeg(0))
    scanner._dicom_frames.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "pydicom", None)
    with pytest.raises(MissingExtra, match=r'pip install "brainmri\[dicom\]"'):
        find_slices([str(path)])
