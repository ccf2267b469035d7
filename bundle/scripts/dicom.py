"""A MONAI ``ImageReader`` for single-frame radiograph DICOM files (CR, DX, secondary captures).

MONAI's own DICOM readers return stored values (or values after rescale only) and keep MONOCHROME1 as it is, so a
radiograph read with them does not look like the same radiograph exported to PNG. :class:`RadiographDicomReader`
returns the grey values a viewer displays, in the same array layout as MONAI's ``PILReader``, so PNG and DICOM
inputs go through identical transforms afterwards:

1. decode (pydicom with its pylibjpeg/pyjpegls plugins: native, RLE Lossless, JPEG Baseline/Extended/Lossless,
   JPEG-LS, JPEG 2000, ...); YBR colour is converted to RGB by pydicom, PALETTE COLOR through its palette;
2. Modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept);
3. VOI LUT Sequence or the first Window Center/Width (with its VOI LUT Function) when present;
4. MONOCHROME1 inverted so that bone is bright, like MONOCHROME2;
5. RGB (secondary captures) to grey with ITU-R 601 luma, as PIL's ``convert("L")`` does for RGB PNGs.

The array is ``float32`` of shape ``(columns, rows)``, i.e. MONAI's ``(x, y)`` (``PILReader`` transposes PIL's
``(rows, columns)`` the same way). Intensities are not rescaled: the bundle's ``ScaleIntensityd`` maps them to [0, 1]
as it does for PNG. Pixel spacing (``PixelSpacing``, else ``ImagerPixelSpacing``, else ``NominalScannedPixelSpacing``)
goes into the meta dict as ``pixel_spacing`` ``[row spacing, column spacing]`` in mm and into ``affine``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, ensure_tuple
from pydicom.dataset import Dataset

try:  # pydicom 3
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.4, as in MONAI Label 0.8.5's environment (its pydicom-seg needs pydicom < 3)
    from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut, apply_voi_lut

__all__ = ["RadiographDicomReader", "is_dicom_file", "pixel_spacing", "describe_dicom", "to_display_grey"]

# spacing attributes in order of preference: PixelSpacing is calibrated to the patient when both are present
SPACING_ATTRIBUTES = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, the weights PIL uses for RGB -> L


def is_dicom_file(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file, judged by content: the ``DICM`` marker after the 128-byte preamble.

    Files without the preamble (raw datasets) are accepted only with a ``.dcm``/``.dicom`` extension, see
    :meth:`RadiographDicomReader.verify_suffix`.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """Return ``((row spacing, column spacing) in mm, attribute name)``, or ``(None, "")`` when no usable spacing.

    Values that are missing, not two numbers, zero, negative or not finite are ignored.
    """
    for keyword in SPACING_ATTRIBUTES:
        value = ds.get(keyword)
        if value is None:
            continue
        if isinstance(value, (str, bytes)):
            value = str(value).split("\\")
        try:
            values = [float(v) for v in (value if isinstance(value, Sequence) else [value])]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1]), keyword
    return None, ""


def describe_dicom(ds: Dataset) -> str:
    """A short description of a DICOM object for messages: SOP class name, modality, transfer syntax."""
    sop = pydicom.uid.UID(str(ds.get("SOPClassUID", ""))) if ds.get("SOPClassUID") else None
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    parts = [sop.name if sop else "no SOP Class UID", f"modality {ds.get('Modality', '?')}"]
    if syntax:
        parts.append(pydicom.uid.UID(syntax).name)
    return ", ".join(parts)


def _number_of_frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def to_display_grey(ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Decode a single-frame DICOM image to the grey values a viewer shows, shape ``(rows, columns)``.

    Returns:
        ``(float32 array, notes)``: ``notes`` lists what was applied, for the run report.

    Raises:
        ValueError: no pixel data, several frames, or pixel data that cannot be decoded (message says why).
    """
    if "PixelData" not in ds:
        raise ValueError(f"no pixel data ({describe_dicom(ds)})")
    frames = _number_of_frames(ds)
    if frames > 1:
        raise ValueError(f"multi-frame image ({frames} frames); only single-frame radiographs are segmented")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types; the message with the syntax is what a user needs
        raise ValueError(f"cannot decode pixel data ({describe_dicom(ds)}): {exc}") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    notes: list[str] = []
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        notes.append("palette colour")
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB (YBR is converted to RGB by pydicom)
        notes.append(f"{photometric} to grey")
        if arr.dtype == np.uint8:  # PIL's own fixed-point ITU-R 601 luma: identical to an RGB PNG of the same pixels
            r, g, b = (arr[..., i].astype(np.uint32) for i in range(3))
            return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.float32), notes
        return (arr.astype(np.float32) @ _LUMA).astype(np.float32), notes
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape} ({describe_dicom(ds)})")

    if ds.get("ModalityLUTSequence"):
        notes.append("modality LUT")
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        notes.append(f"rescale slope {float(ds.RescaleSlope):g} intercept {float(ds.RescaleIntercept):g}")
    arr = apply_modality_lut(arr, ds)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            voi = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        except Exception as exc:  # a malformed window/LUT must not lose the image: use the full range instead
            notes.append(f"VOI ignored ({exc})")
        else:
            if voi is not arr:
                if ds.get("VOILUTSequence"):
                    notes.append("VOI LUT")
                else:
                    center, width = ds.WindowCenter, ds.WindowWidth
                    center = center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center
                    width = width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width
                    notes.append(f"window {float(center):g}/{float(width):g} {ds.get('VOILUTFunction', 'LINEAR')}")
            arr = voi
    arr = arr.astype(np.float32, copy=False)
    if photometric == "MONOCHROME1":
        # min + max - x maps the darkest value to the brightest and back; ScaleIntensity to [0, 1] afterwards makes
        # this exactly 1 - x of the MONOCHROME2 rendering
        arr = np.float32(arr.min()) + np.float32(arr.max()) - arr
        notes.append("MONOCHROME1 inverted")
    return arr, notes


class RadiographDicomReader(ImageReader):
    """Load single-frame radiograph DICOM files as grey images in MONAI's ``(x, y)`` layout, like ``PILReader``.

    See the module docstring for the pixel pipeline. Files are recognised by content (``DICM`` marker), whatever
    their name; a file without the marker is accepted only when it ends in ``.dcm``/``.dicom`` and then read with
    ``force=True``.

    Meta data (besides MONAI's ``spatial_shape``, ``original_channel_dim`` and ``affine``): ``format`` ("DICOM"),
    ``pixel_spacing`` (``[row, column]`` mm, or NaN when unknown), ``spacing_source``, ``pixel_processing`` (what was
    applied), ``modality``, ``patient_orientation`` (e.g. ``"L\\F"``), ``sop_instance_uid``, ``rows``, ``columns``.
    The ``affine`` scales x by the column spacing and y by the row spacing (identity when unknown).

    Args:
        kwargs: passed to ``pydicom.dcmread``.
    """

    suffixes = ("dcm", "dicom")

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file is DICOM by content (or has a DICOM extension)."""
        return all(is_dicom_file(f) or is_supported_format(f, self.suffixes) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> Dataset | list[Dataset]:
        """Read one or several files with pydicom; returns ``Dataset`` objects (pixels are decoded in ``get_data``)."""
        options = {**self.kwargs, **kwargs}
        datasets = []
        for name in ensure_tuple(data):
            name = os.fspath(name)
            if not os.path.isfile(name):
                raise FileNotFoundError(f"{name}: no such file")
            if os.path.getsize(name) == 0:
                raise ValueError(f"{name}: empty file (0 bytes)")
            forced = not is_dicom_file(name)
            try:
                ds = pydicom.dcmread(name, **{"force": forced, **options})
            except Exception as exc:
                raise ValueError(f"{name}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
            if forced and "SOPClassUID" not in ds and "PixelData" not in ds:  # force=True "reads" any file
                raise ValueError(f"{name}: not a readable DICOM file (no 'DICM' marker and no DICOM image elements)")
            datasets.append(ds)
        return datasets if len(datasets) > 1 else datasets[0]

    def get_data(self, img: Dataset | Sequence[Dataset]) -> tuple[np.ndarray, dict]:
        """Decode the pixels; return ``(array (x, y) or (files, x, y), meta dict)`` (several files: stacked first)."""
        arrays, meta = [], {}
        for ds in img if isinstance(img, (list, tuple)) else [img]:  # a Dataset is iterable: no ensure_tuple
            try:
                grey, notes = to_display_grey(ds)
            except ValueError as exc:
                raise ValueError(f"{getattr(ds, 'filename', '<dataset>')}: {exc}") from exc
            arrays.append(grey.T)  # (rows, columns) -> MONAI's (x, y) = (columns, rows), as PILReader does
            if not meta:
                meta = self._meta(ds, grey.shape, notes)
        data = np.stack(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        return data, meta

    @staticmethod
    def _meta(ds: Dataset, shape: tuple[int, int], notes: list[str]) -> dict:
        spacing, source = pixel_spacing(ds)
        affine = np.eye(4)
        if spacing is not None:
            affine[0, 0], affine[1, 1] = spacing[1], spacing[0]  # x runs along a row: column spacing
        orientation = ds.get("PatientOrientation") or []
        return {
            "format": "DICOM",
            MetaKeys.SPATIAL_SHAPE: np.asarray((shape[1], shape[0])),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel, as PILReader reports it
            MetaKeys.AFFINE: affine,
            "pixel_spacing": np.asarray(spacing if spacing else (np.nan, np.nan), dtype=np.float64),
            "spacing_source": source,
            "pixel_processing": "; ".join(notes),
            "modality": str(ds.get("Modality", "")),
            "patient_orientation": "\\".join(str(v) for v in ensure_tuple(orientation)),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "rows": int(shape[0]),
            "columns": int(shape[1]),
        }
