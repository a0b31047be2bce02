"""Slices from what scanners and research pipelines write: DICOM files and series (pydicom) and
NIfTI volumes (nibabel), turned into the 8-bit slices the models were trained on.

A converter that ignores the header feeds the model images unlike its training data, so:

- DICOM: the stored values go through the rescale slope and intercept (modality LUT), then
  the header's window (center/width, the standard's linear function) or, without one, the
  slice's own range, to 0..255; MONOCHROME1 (white is low) is inverted; a multi-frame file
  is one slice per frame; a folder of a series gives its slices in instance order. A file
  without pixel data, or compressed in a transfer syntax no installed decoder reads, is one
  line naming the file.
- NIfTI: the volume (scaled by its header's slope and intercept) is reoriented to the closest
  canonical (RAS+) orientation and cut into axial slices, shown as radiology viewers show
  them (anterior up); intensities map to 0..255 through the header's display range
  (cal_min/cal_max) or, without one, the volume's own range, the same for every slice.

Every slice is a :class:`Slice`: a name for the CSV (``file.dcm``, ``file.dcm#frame2``,
``volume.nii.gz#z012``), the volume it belongs to (for the per-volume summary) and how to read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from brainmri.data.samples import IMAGE_EXTENSIONS
from brainmri.data.scan import load_image, to_channels, verify_image
from brainmri.errors import DatasetError, require

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Slice:
    """One 2-D image to predict and where it came from."""

    name: str  # the CSV's ``file``: the path, with ``#frameK`` or ``#zKKK`` inside a multi-slice file
    path: Path
    kind: str  # image | dicom | nifti
    index: int = 0  # the frame (DICOM) or axial slice (NIfTI)
    volume: Optional[str] = None  # the series folder, multi-frame file or NIfTI volume it belongs to

    def load(self, channels: int) -> Image.Image:
        """The slice as 8-bit grayscale (1) or RGB (3), like a training image."""
        if self.kind == "dicom":
            return to_channels(Image.fromarray(dicom_frames(self.path)[self.index]), channels)
        if self.kind == "nifti":
            return to_channels(Image.fromarray(nifti_slices(self.path)[self.index]), channels)
        return load_image(self.path, channels)

    @property
    def stem(self) -> str:
        """A file-name-safe stem (Grad-CAM overlays)."""
        base = self.path.name.removesuffix(".gz").rsplit(".", 1)[0] if self.path.is_file() else self.path.name
        return base if self.kind == "image" else f"{base}_{self.index:03d}"


def is_dicom(path: Path) -> bool:
    """By suffix, or for the suffix-less files scanners write, by the ``DICM`` preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def window_to_uint8(values: np.ndarray, center: Optional[float], width: Optional[float]) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2) to 0..255; without a window, the
    values' own min..max."""
    values = values.astype(np.float64)
    if center is None or width is None or width < 1:
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    else:
        scaled = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def _first(value) -> Optional[float]:
    """A DICOM number that may be multi-valued (several windows): the first, or None."""
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _pixels(path: Path, ds) -> np.ndarray:
    if "PixelData" not in ds:
        raise DatasetError(f"{path}: DICOM file without pixel data (a structured report or a header only?)")
    try:
        return ds.pixel_array
    except Exception as e:  # pydicom raises several kinds when no handler decodes the syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{syntax} ({syntax.name})" if syntax is not None else "unknown"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(
            f"{path}: cannot decode its pixel data, transfer syntax {name}: {reason} "
            "(compressed DICOM needs a decoder, e.g. pip install pylibjpeg pylibjpeg-libjpeg)"
        ) from None


def _version(path: Path) -> tuple[Path, int, int]:
    """The cache key of a file's decoded slices: a rewritten file is decoded again."""
    stat = path.stat()
    return path, stat.st_mtime_ns, stat.st_size


def dicom_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a DICOM file as an 8-bit slice (grayscale, or RGB for colour data)."""
    return _dicom_frames(*_version(path))


def nifti_slices(path: Path) -> list[np.ndarray]:
    """The axial slices of a 3-D NIfTI volume, in canonical (RAS+) orientation, inferior to
    superior, each as an 8-bit image with anterior up and the patient's right on the left."""
    return _nifti_slices(*_version(path))


@functools.lru_cache(maxsize=4)
def _dicom_frames(path: Path, mtime: int, size: int) -> list[np.ndarray]:
    pydicom = require("pydicom", "dicom", f"reading the DICOM file {path}")
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:
        raise DatasetError(f"{path}: not a readable DICOM file ({str(e).strip().splitlines()[0]})") from None
    pixels = _pixels(path, ds)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3
    stack = pixels if frames > 1 else pixels[None]
    if colour:  # pydicom gives RGB for colour data; windowing is a grayscale notion
        return [window_to_uint8(f, None, None) if f.dtype != np.uint8 else f for f in stack]
    slope, intercept = _first(getattr(ds, "RescaleSlope", None)), _first(getattr(ds, "RescaleIntercept", None))
    values = stack.astype(np.float64) * (1.0 if slope is None else slope) + (intercept or 0.0)
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    out = [window_to_uint8(v, center, width) for v in values]
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        out = [255 - f for f in out]
    return out


def dicom_series(paths: Sequence[Path]) -> list[Path]:
    """The files of one folder in instance order: series, then InstanceNumber (then the
    slice position along the normal, then the name)."""
    pydicom = require("pydicom", "dicom", f"reading the DICOM series in {paths[0].parent}")

    def key(path: Path) -> tuple:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:
            raise DatasetError(f"{path}: not a readable DICOM file ({str(e).strip().splitlines()[0]})") from None
        position = getattr(ds, "ImagePositionPatient", None)
        z = float(position[2]) if position is not None and len(position) == 3 else 0.0
        return (str(getattr(ds, "SeriesInstanceUID", "")), int(getattr(ds, "InstanceNumber", 0) or 0), z, path.name)

    return [p for _, p in sorted((key(p), p) for p in paths)]


@functools.lru_cache(maxsize=2)
def _nifti_slices(path: Path, mtime: int, size: int) -> list[np.ndarray]:
    nib = require("nibabel", "nifti", f"reading the NIfTI volume {path}")
    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as e:
        raise DatasetError(f"{path}: not a readable NIfTI volume ({str(e).strip().splitlines()[0]})") from None
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise DatasetError(f"{path}: a {volume.ndim}-D volume {volume.shape}; give one 3-D volume")
    header = image.header
    lo, hi = float(header.get("cal_min", 0) or 0), float(header.get("cal_max", 0) or 0)
    if not hi > lo:
        lo, hi = float(volume.min()), float(volume.max())
    scaled = np.clip((volume - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(volume)
    pixels = np.round(scaled * 255).astype(np.uint8)
    return [np.ascontiguousarray(np.flipud(pixels[:, :, k].T)) for k in range(pixels.shape[2])]


def _file_slices(path: Path, volume: Optional[str] = None) -> list[Slice]:
    if is_nifti(path):
        return [Slice(f"{path}#z{k:03d}", path, "nifti", k, str(path)) for k in range(len(nifti_slices(path)))]
    if is_dicom(path):
        frames = len(dicom_frames(path))
        if frames == 1:
            return [Slice(str(path), path, "dicom", 0, volume)]
        return [Slice(f"{path}#frame{k}", path, "dicom", k, volume or str(path)) for k in range(frames)]
    reason, _, _ = verify_image(path)
    if reason is not None:
        raise DatasetError(f"{path}: {reason}")
    return [Slice(str(path), path, "image")]


def _folder_slices(folder: Path) -> list[Slice]:
    """Images and volumes found under ``folder``; each folder's DICOM files as one series."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts))
    out: list[Slice] = []
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        if is_dicom(path):
            by_folder.setdefault(path.parent, []).append(path)
        elif is_nifti(path) or path.suffix.lower() in IMAGE_EXTENSIONS:
            out += _file_slices(path)
    for parent, members in sorted(by_folder.items()):
        volume = str(parent) if len(members) > 1 else None
        for path in dicom_series(members):
            out += _file_slices(path, volume)
    return out


def find_slices(inputs: Sequence[str]) -> list[Slice]:
    """Every slice of the images, DICOM files, series folders and NIfTI volumes named (folders
    searched recursively), each read once here so that a bad file fails before any model loads."""
    found: list[Slice] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += _folder_slices(path)
        elif path.is_file():
            found += _file_slices(path)
        else:
            raise DatasetError(f"no such image or folder: {path}")
    if not found:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS | set(DICOM_SUFFIXES) | set(NIFTI_SUFFIXES)))
        raise DatasetError(f"no images ({kinds}) in {', '.join(inputs)}")
    return found
