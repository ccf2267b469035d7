"""A MONAI ``ImageReader`` for single-frame radiograph DICOM files (CR, DX, secondary captures), hardened against
the headers found in real archives.

MONAI's own DICOM readers return stored values (or values after rescale only) and keep MONOCHROME1 as it is, so a
radiograph read with them does not look like the same radiograph exported to PNG. :class:`RadiographDicomReader`
returns the grey values a viewer displays, in the same array layout as MONAI's ``PILReader``, so PNG and DICOM
inputs go through identical transforms afterwards:

1. check the header before decoding (:func:`check_pixel_geometry`): Rows x Columns within ``max_pixels``, and for
   compressed pixel data the codestream's own size equal to Rows x Columns, so a header or a JPEG 2000 codestream
   that claims a huge canvas fails at once instead of allocating it;
2. decode (pydicom with its pylibjpeg/pyjpegls plugins: native, RLE Lossless, JPEG Baseline/Extended/Lossless,
   JPEG-LS, JPEG 2000, ...; GDCM for what they refuse, such as 12-bit JPEG Extended from some modalities, see
   :func:`decode_with_gdcm`); YBR colour is converted to RGB by pydicom, PALETTE COLOR through its palette;
3. Pixel Padding Value / Range Limit: the padding pixels are set aside (:func:`_padding_pixels`) and shown at the
   image's darkest value at the end, so they do not stretch the intensity range;
4. Modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept);
5. VOI LUT Sequence or the first Window Center/Width (with its VOI LUT Function) when present, unless it maps every
   pixel to one value (a window that misses every stored value is ignored, not shown as a blank image);
6. MONOCHROME1 inverted once so that bone is bright, like MONOCHROME2 (Presentation LUT Shape INVERSE is the
   standard's pairing for MONOCHROME1, not a second inversion; on MONOCHROME2 it inverts);
7. RGB (secondary captures) to grey with ITU-R 601 luma, as PIL's ``convert("L")`` does for RGB PNGs.

Degrade rather than fail: a rescale, window or VOI LUT that is not valid (NaN, infinite, zero slope, zero width, text
where numbers belong, an unknown VOI LUT Function) is ignored and named in ``pixel_processing``; the image is still
read. A spacing that is not two positive finite numbers means "no spacing" (``spacing_source`` says why).

The array is ``float32`` of shape ``(columns, rows)``, i.e. MONAI's ``(x, y)`` (``PILReader`` transposes PIL's
``(rows, columns)`` the same way). Intensities are not rescaled: the bundle's ``ScaleIntensityd`` maps them to [0, 1]
as it does for PNG. Pixel spacing (:func:`pixel_spacing`) goes into the meta dict as ``pixel_spacing`` ``[row spacing,
column spacing]`` in mm and into ``affine``.
"""

from __future__ import annotations

import copy
import faulthandler
import importlib.util
import logging
import math
import os
import pickle
import zlib
from collections.abc import Sequence

import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, ensure_tuple
from pydicom.dataset import Dataset

from .errors import ImageTooLarge, InputError, NotARadiograph, first_line, is_input_failure
from .files import is_dicom_file, is_part10_file
from .radiograph_view import FRONTAL, NOT_A_FRONTAL_CHEST, UNKNOWN, header_view

try:  # pydicom 3
    from pydicom.encaps import generate_frames
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

    def _first_frame(data: bytes) -> bytes:
        return next(iter(generate_frames(data, number_of_frames=1)))

except ImportError:  # pydicom 2.4, as in MONAI Label 0.8.5's environment (its pydicom-seg needs pydicom < 3)
    from pydicom.encaps import generate_pixel_data_frame
    from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

    def _first_frame(data: bytes) -> bytes:
        return next(iter(generate_pixel_data_frame(data, 1)))


__all__ = [
    "RadiographDicomReader",
    "MAX_IMAGE_PIXELS",
    "is_dicom_file",
    "read_dicom",
    "safe_get",
    "numbers",
    "pixel_spacing",
    "describe_dicom",
    "number_of_frames",
    "check_image_size",
    "check_pixel_geometry",
    "to_display_grey",
]

# Inputs are whatever a folder holds: pydicom's warnings about invalid values (logged with the whole value, pixel
# bytes included) would flood a batch log. The bundle checks every value it uses itself (see below).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
# pydicom logs every decoder plugin's failure with a traceback before raising; the run report has the reason
if logging.getLogger("pydicom.pixels.decoders.base").level == logging.NOTSET:
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)

# The largest image read by default: 36 megapixels (6000 x 6000) is above every chest radiograph detector (the
# largest, 43 x 43 cm at 100 um, is 4300 x 4300; the Montgomery set's 4892 x 4020 scans are 19.7 megapixels) and
# bounds the memory one image can take (about 1 GB through decode, pre- and post-processing at float32).
MAX_IMAGE_PIXELS = 36_000_000
# spacing attributes in order of preference: PixelSpacing is calibrated to the patient when both are present
SPACING_ATTRIBUTES = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, the weights PIL uses for RGB -> L
_DEFLATED = "1.2.840.10008.1.2.1.99"
_BINARY_VRS = ("OB", "OW", "OD", "OF", "OL", "OV", "UN")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


# Modality values of projection radiographs (and secondary captures of them, often "OT"; empty when absent)
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "OT", "")
# SOP Class UID prefixes of DICOM objects that carry no radiograph, with what to call them in the report
_NON_IMAGE_SOP_CLASSES = (
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report or key-object selection"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.66", "segmentation, registration or raw data"),
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.67", "real-world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68.", "surface"),
    ("1.2.840.10008.5.1.4.1.1.91.", "content assessment"),
    ("1.2.840.10008.5.1.4.1.1.200.", "protocol"),
)


def classify_dataset(ds: Dataset, modalities: Sequence[str] = RADIOGRAPH_MODALITIES) -> None:
    """Check that a DICOM object is a radiograph to segment: a single-frame image of one of ``modalities``.

    Raises:
        NotARadiograph: an object that is not one (DICOMDIR, structured report, presentation state, encapsulated
            document, multi-frame image, another modality, ...), with the reason: its report row is ``skipped``.
        InputError: an image object whose header lacks its image (Rows/Columns): a truncated or corrupt file.
    """
    meta = getattr(ds, "file_meta", None)
    sop = str(safe_get(ds, "SOPClassUID") or (safe_get(meta, "MediaStorageSOPClassUID") if meta else "") or "")[:64]
    uid = pydicom.uid.UID(sop)
    name = uid.name if uid.is_valid else f"invalid SOP Class UID {sop[:40]!r}" if sop else "no SOP Class UID"
    if sop == pydicom.uid.MediaStorageDirectoryStorage:
        raise NotARadiograph("DICOMDIR (media directory index), not an image")
    for prefix, what in _NON_IMAGE_SOP_CLASSES:
        if sop.startswith(prefix):
            raise NotARadiograph(f"{what} ({name}), not an image")
    if "Rows" not in ds or "Columns" not in ds:
        if "Image Storage" in name or not uid.is_valid:  # an image object without its image: corrupt
            raise InputError(f"no Rows and Columns in this DICOM object ({name}): a truncated or corrupt header", "")
        raise NotARadiograph(f"no image in this DICOM object ({name})")
    frames, _ = number_of_frames(ds)
    if frames > 1:
        raise NotARadiograph(
            f"multi-frame image ({frames} frames, {name}); only single-frame radiographs are segmented"
        )
    modality = str(safe_get(ds, "Modality", "") or "").strip().upper()
    if modality not in [m.upper() for m in modalities]:
        allowed = ", ".join(m for m in modalities if m)
        shown = "".join(c if c.isprintable() else "?" for c in modality[:16])
        raise NotARadiograph(f"modality {shown} is not a projection radiograph ({allowed} are segmented)")


def _valid_value(vr: str, value) -> bool:
    """Whether one value of an element can be copied into a new DICOM object and read back (highdicom converts dates,
    times and numbers; pydicom refuses non-finite decimal strings on writing)."""
    if vr in ("DS", "IS"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        return (
            math.isfinite(number)
            and len(str(value)) <= (16 if vr == "DS" else 12)
            and (vr == "DS" or number == int(number))
        )
    if vr in ("DA", "DT", "TM"):
        try:
            return not str(value) or getattr(pydicom.valuerep, vr)(str(value)) is not None
        except (TypeError, ValueError):
            return False
    if isinstance(value, (str, pydicom.valuerep.PersonName)):
        text = str(value)
        # control characters are invalid in every string VR but ESC (character sets); texts may also break lines
        allowed = "\x1b\r\n\t\f" if vr in ("LT", "ST", "UT") else "\x1b"
        if any(ord(c) < 32 and c not in allowed for c in text):
            return False
        try:
            pydicom.valuerep.validate_value(vr, text, pydicom.config.RAISE)
        except (TypeError, ValueError):
            return False
    return True


def _valid_copy(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with only the elements whose values are valid for their VR (sequences cleaned recursively):
    a source header from an archive may hold text where a number belongs, impossible dates or broken UIDs, which
    highdicom would copy into the SEG and fail on."""
    clean = Dataset()
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            if tag.group == 0x7FE0 or (element.VR in _BINARY_VRS and len(element.value or b"") > 1024):
                continue  # pixel data, icons, private blobs: nothing an output copies
            if element.VR == "SQ":
                element = copy.copy(element)
                element.value = [_valid_copy(item) for item in element.value]
            else:
                values = element.value if element.VM > 1 else [element.value]
                if not all(v is None or v == "" or _valid_value(element.VR, v) for v in values):
                    continue
        except Exception:  # a value pydicom cannot even convert is left out too (noqa: the element, not the run)
            continue
        clean.add(element)
    return clean


def clean_header(ds: Dataset) -> Dataset:
    """The header of ``ds`` as outputs may copy it (the DICOM SEG's patient, study and references, the report's UIDs):
    only the elements whose values are valid for their VR, sequences cleaned likewise, no pixel data and no binary
    value over 1 KiB. A SOP Class or Instance UID that is corrupt in the dataset is taken from the file meta header,
    which names the same object."""
    clean = _valid_copy(ds)
    meta = _valid_copy(getattr(ds, "file_meta", None) or Dataset())
    for keyword, fallback in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not clean.get(keyword) and meta.get(fallback):
            setattr(clean, keyword, meta.get(fallback))
    return clean


def header_from_json(text: str) -> Dataset:
    """The header that :class:`RadiographDicomReader` passed along as ``dicom_header`` (DICOM JSON), or an empty
    ``Dataset`` for inputs that are not DICOM."""
    return Dataset.from_json(text) if text else Dataset()


def check_image_size(rows: int, columns: int, max_pixels: int, what: str = "the image") -> None:
    """Raise :class:`ImageTooLarge` when ``rows`` x ``columns`` exceeds ``max_pixels`` (or is not positive)."""
    if rows <= 0 or columns <= 0:
        raise InputError(f"{what} has no pixels ({rows} x {columns})")
    if rows * columns > max_pixels:
        raise ImageTooLarge(
            f"{what} is {rows} x {columns} = {rows * columns / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels (raise it with --max_image_pixels)"
        )


def _check_deflated_size(path: str, max_bytes: int) -> None:
    """A Deflated Explicit VR file expands in memory when pydicom reads it: stream-inflate it first (without
    keeping the output) and refuse it when it expands beyond ``max_bytes`` (a deflate bomb)."""
    with open(path, "rb") as f:
        head = f.read(144)
        if len(head) < 144 or head[132:136] != b"\x02\x00\x00\x00":  # no File Meta Group Length: let pydicom judge
            return
        f.seek(144 + int.from_bytes(head[140:144], "little"))
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := f.read(1 << 20):
            try:
                total += len(inflater.decompress(chunk, max_bytes + 1 - total))
                while inflater.unconsumed_tail and total <= max_bytes:
                    total += len(inflater.decompress(inflater.unconsumed_tail, max_bytes + 1 - total))
            except zlib.error as exc:
                raise InputError(f"the deflated dataset cannot be inflated ({exc})") from exc
            if total > max_bytes:
                raise ImageTooLarge(
                    f"the deflated dataset expands to more than {max_bytes / 2**20:.0f} MiB (raise the limit with "
                    "--max_image_pixels)"
                )


def read_dicom(path: str, max_pixels: int = MAX_IMAGE_PIXELS, stop_before_pixels: bool = False, **kwargs) -> Dataset:
    """Read a DICOM file with pydicom: a Part 10 file (``DICM`` marker), or a dataset without preamble and file meta
    information read with ``force=True`` (its encoding is then written into a file meta header).

    A Deflated Explicit VR Little Endian file is checked for a deflate bomb first (:func:`_check_deflated_size`).

    Raises:
        InputError: the file is not a readable DICOM file (the message says why).
    """
    forced = not is_part10_file(path)
    try:
        meta = pydicom.filereader.read_file_meta_info(path) if not forced else None
        if meta is not None and str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
            _check_deflated_size(path, max_pixels * 4 + (64 << 20))
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=forced, **kwargs)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"unreadable DICOM header ({type(exc).__name__}: {first_line(exc)})") from exc
    if forced and "SOPClassUID" not in ds and "PixelData" not in ds and "Rows" not in ds:  # force=True reads anything
        raise InputError("not a DICOM file: no 'DICM' marker and no DICOM data elements")
    if forced:
        _name_the_encoding(ds)
    return ds


def _name_the_encoding(ds: Dataset) -> None:
    """A dataset read without file meta information has no Transfer Syntax UID, which pydicom needs to decode its
    pixels: write down the encoding pydicom found it in (a raw dataset is uncompressed by definition)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:  # pydicom 2.4
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian
        if implicit
        else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
    )


def safe_get(ds: Dataset, keyword: str, default=None):
    """``ds.get(keyword, default)``, or ``default`` when the element's value cannot be converted (pydicom converts
    lazily, so a corrupt value raises only when it is read: ``NotImplementedError`` for an unknown VR, ``ValueError``
    for text in a number, ...)."""
    try:
        return ds.get(keyword, default)
    except Exception:
        return default


def _raw_text(ds: Dataset, keyword: str) -> str:
    """The stored value of an element as text, for messages (whatever its VR or content), at most 40 characters."""
    try:
        element = ds.get_item(keyword)
        value = element.value if element is not None else None
    except Exception:
        return "?"
    if isinstance(value, bytes):
        value = value.decode("latin-1").strip(" \x00")
    many = isinstance(value, (list, tuple, pydicom.multival.MultiValue))
    text = "\\".join(str(v) for v in value) if many else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shown(ds: Dataset, keyword: str) -> str:
    """The stored value of an element in quotes, as messages show it (``'abc'``; DICOM's backslash kept single)."""
    return "'" + _raw_text(ds, keyword) + "'"


def numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """The numeric values of an element, ``None`` when it is absent or empty.

    Raises:
        InputError: the element holds something that is not numbers (message with its stored value).
    """
    if keyword not in ds:
        return None
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise InputError(f"{keyword} {_shown(ds, keyword)} is not a number") from exc
    if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
        return None
    if isinstance(value, (str, bytes)):
        value = (value.decode("latin-1") if isinstance(value, bytes) else value).split("\\")
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{keyword} {_shown(ds, keyword)} is not a number") from exc


def _magnification(ds: Dataset) -> tuple[float | None, str]:
    """Estimated Radiographic Magnification Factor (0018,1114): ``(factor, "")`` or ``(None, why not)``."""
    try:
        values = numbers(ds, "EstimatedRadiographicMagnificationFactor")
    except InputError as exc:
        return None, f"{exc}, ignored"
    if values is None:
        return None, "no EstimatedRadiographicMagnificationFactor"
    if len(values) != 1 or not math.isfinite(values[0]) or values[0] <= 0:
        keyword = "EstimatedRadiographicMagnificationFactor"
        return None, f"{keyword} {_shown(ds, keyword)} ignored"
    return values[0], ""


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """Return ``((row spacing, column spacing) in mm, source)``, or ``(None, why)`` when no usable spacing.

    Attributes are tried in the order of :data:`SPACING_ATTRIBUTES`; values that are missing, not two numbers, zero,
    negative or not finite are ignored and named in ``source``. Imager Pixel Spacing is measured at the detector:
    when the image has an Estimated Radiographic Magnification Factor, the spacing is divided by it to give the
    spacing on the patient plane (PS3.3 C.8.11.7), and ``source`` says which was used.

    ``source`` is e.g. ``"PixelSpacing"``, ``"ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor 1.15
    (patient plane)"``, ``"ImagerPixelSpacing (detector plane, no EstimatedRadiographicMagnificationFactor)"``, or
    ``"none: PixelSpacing 'abc' is not a number"``; ``""`` when the file has no spacing attribute at all.
    """
    ignored = []
    for keyword in SPACING_ATTRIBUTES:
        try:
            values = numbers(ds, keyword)
        except InputError as exc:
            ignored.append(str(exc))
            continue
        if values is None:
            continue
        if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
            ignored.append(f"{keyword} {_shown(ds, keyword)} is not two positive numbers")
            continue
        spacing, source = (values[0], values[1]), keyword
        if keyword == "ImagerPixelSpacing":
            factor, why_not = _magnification(ds)
            if factor is not None:
                spacing = (values[0] / factor, values[1] / factor)
                source = f"ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor {factor:g} (patient plane)"
            else:
                source = f"ImagerPixelSpacing (detector plane, {why_not})"
        return spacing, "; ".join([source] + [f"{text}, ignored" for text in ignored])
    return None, ("none: " + "; ".join(ignored)) if ignored else ""


def describe_dicom(ds: Dataset) -> str:
    """A short description of a DICOM object for messages: SOP class name, modality, transfer syntax."""
    sop = str(safe_get(ds, "SOPClassUID", "") or "")
    syntax = safe_get(getattr(ds, "file_meta", Dataset()), "TransferSyntaxUID")
    sop_name = pydicom.uid.UID(sop).name if pydicom.uid.UID(sop).is_valid else "invalid SOP Class UID"
    parts = [sop_name if sop else "no SOP Class UID", f"modality {safe_get(ds, 'Modality', '?')}"]
    if syntax:
        parts.append(pydicom.uid.UID(str(syntax)).name if pydicom.uid.UID(str(syntax)).is_valid else "invalid syntax")
    return ", ".join(str(p)[:80] for p in parts)


def number_of_frames(ds: Dataset) -> tuple[int, str]:
    """``(frames, note)``: Number of Frames, or 1 with a note when it is missing, not a number, or not positive."""
    try:
        values = numbers(ds, "NumberOfFrames")
    except InputError as exc:
        return 1, f"{exc}, read as 1 frame"
    if not values:
        return 1, ""
    if len(values) != 1 or not math.isfinite(values[0]) or values[0] < 1 or values[0] != int(values[0]):
        return 1, f"NumberOfFrames {_shown(ds, 'NumberOfFrames')} read as 1 frame"
    return int(values[0]), ""


def _whole_number(ds: Dataset, keyword: str) -> int | None:
    try:
        values = numbers(ds, keyword)
    except InputError:
        return None
    if not values or len(values) != 1 or not math.isfinite(values[0]) or values[0] != int(values[0]):
        return None
    return int(values[0])


def check_pixel_geometry(ds: Dataset, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Check, before decoding, that the pixel data can be decoded within ``max_pixels``.

    Rows and Columns must be positive whole numbers whose product is within ``max_pixels``; for encapsulated
    (compressed) pixel data, the first frame's codestream must describe the same Rows x Columns (a JPEG 2000 or JPEG
    codestream is decoded to its own size, whatever the DICOM header says).

    Raises:
        InputError: the geometry is invalid; :class:`ImageTooLarge` when it is above the limit.
    """
    rows, columns = _whole_number(ds, "Rows"), _whole_number(ds, "Columns")
    if rows is None or columns is None:
        raise InputError(f"Rows {_shown(ds, 'Rows')} x Columns {_shown(ds, 'Columns')} is not an image size")
    check_image_size(rows, columns, max_pixels, "the image (Rows x Columns)")
    syntax = pydicom.uid.UID(str(safe_get(getattr(ds, "file_meta", Dataset()), "TransferSyntaxUID", "") or ""))
    if syntax and not syntax.is_transfer_syntax:
        raise InputError(f"unknown transfer syntax {str(syntax)[:64]!r}: the pixel data cannot be decoded")
    if not syntax or not syntax.is_compressed or "PixelData" not in ds:
        return
    try:
        frame = _first_frame(ds.PixelData)
    except Exception as exc:
        raise InputError(f"the compressed pixel data is not valid encapsulated data ({first_line(exc)})") from exc
    size = _codestream_size(bytes(frame), syntax)
    if size is not None and size != (rows, columns):
        raise InputError(
            f"the {syntax.name} codestream is {size[0]} x {size[1]} pixels but the header says Rows x Columns = "
            f"{rows} x {columns}"
        )


def _codestream_size(frame: bytes, syntax: pydicom.uid.UID) -> tuple[int, int] | None:
    """``(rows, columns)`` from a JPEG 2000 or JPEG/JPEG-LS codestream's header (read without decoding)."""
    try:
        if syntax.name.startswith("JPEG 2000") or "2000" in syntax.name:
            import openjpeg

            params = openjpeg.get_parameters(frame)
            return int(params["rows"]), int(params["columns"])
        if syntax.name.startswith("JPEG"):
            import libjpeg

            try:
                params = libjpeg.get_parameters(frame)
            except Exception:  # a scan header libjpeg refuses, which GDCM may decode: into Rows x Columns, checked
                return None
            return int(params["rows"]), int(params["columns"])
    except ImportError:
        return None
    except Exception as exc:
        raise InputError(f"the {syntax.name} codestream header cannot be read ({first_line(exc)})") from exc
    return None


def _single_numbers(ds: Dataset, keywords: tuple[str, ...], what: str, notes: list[str]) -> list | None:
    """The one number each element holds (``None`` for an absent or empty one), or ``None`` when one of them holds
    text or several values: then ``what`` is named in ``notes`` as ignored."""
    try:
        found = [numbers(ds, keyword) for keyword in keywords]
    except InputError as exc:
        notes.append(f"{what} ignored ({exc})")
        return None
    if any(values is not None and len(values) != 1 for values in found):
        notes.append(f"{what} ignored ({' and '.join(keywords)} must be single numbers)")
        return None
    return [values[0] if values else None for values in found]


def _rescale_is_valid(ds: Dataset, notes: list[str]) -> bool:
    """Whether Rescale Slope/Intercept can be applied; an invalid pair is named in ``notes``."""
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return False
    found = _single_numbers(ds, ("RescaleSlope", "RescaleIntercept"), "rescale", notes)
    if found is None:
        return False
    slope, intercept = found
    if slope is None or intercept is None:
        notes.append("rescale ignored (Rescale Slope and Intercept must both be single numbers)")
        return False
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        notes.append(f"rescale slope {slope:g} intercept {intercept:g} ignored (not finite, or slope 0)")
        return False
    notes.append(f"rescale slope {slope:g} intercept {intercept:g}")
    return True


def _apply_modality(arr: np.ndarray, ds: Dataset, notes: list[str]) -> tuple[np.ndarray, Dataset]:
    """The Modality LUT stage; returns the values and the dataset attributes the VOI stage must see."""
    used = Dataset()
    if safe_get(ds, "ModalityLUTSequence"):
        try:
            out = apply_modality_lut(arr, ds)
        except Exception as exc:
            notes.append(f"modality LUT ignored ({first_line(exc)})")
        else:
            notes.append("modality LUT")
            used.ModalityLUTSequence = ds.ModalityLUTSequence
            return out, used
    if _rescale_is_valid(ds, notes):
        used.RescaleSlope, used.RescaleIntercept = ds.RescaleSlope, ds.RescaleIntercept
        return arr.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept), used
    return arr, used


def _window(ds: Dataset, notes: list[str]) -> tuple[float, float, str] | None:
    """The first valid Window Center/Width with its VOI LUT Function, or ``None`` (problems named in ``notes``)."""
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return None
    try:
        centers, widths = numbers(ds, "WindowCenter"), numbers(ds, "WindowWidth")
    except InputError as exc:
        notes.append(f"window ignored ({exc})")
        return None
    if not centers or not widths:
        notes.append("window ignored (Window Center or Width is missing)")
        return None
    center, width = centers[0], widths[0]
    function = str(safe_get(ds, "VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        notes.append(f"VOI LUT Function {function[:20]!r} unknown, LINEAR used")
        function = "LINEAR"
    if not (math.isfinite(center) and math.isfinite(width)) or width < (1 if function == "LINEAR" else 1e-12):
        notes.append(f"window {center:g}/{width:g} ignored (not finite, or width too small)")
        return None
    return center, width, function


def _apply_voi(
    arr: np.ndarray, ds: Dataset, used: Dataset, photometric: str, notes: list[str], image: np.ndarray | None = None
) -> np.ndarray:
    """The VOI stage: the VOI LUT Sequence, else the first valid window, else the values unchanged.

    A LUT or window that maps every pixel of the image (``image``: the pixels that are not padding) to one value
    misses all of them (a window of another acquisition, or of the wrong rescale): it is ignored, as a viewer's user
    would reset it, instead of returning a blank image."""
    out = _voi_values(arr, ds, used, photometric, notes)
    if out is arr:
        return arr
    shown, values = (out, arr) if image is None else (out[image], arr[image])
    if values.size and np.nanmax(values) > np.nanmin(values) and not np.nanmax(shown) > np.nanmin(shown):
        applied = notes.pop()
        notes.append(
            f"{applied} ignored (it maps every pixel, {np.nanmin(values):g} to {np.nanmax(values):g}, to one value)"
        )
        return arr
    return out


def _voi_values(arr: np.ndarray, ds: Dataset, used: Dataset, photometric: str, notes: list[str]) -> np.ndarray:
    sequence = safe_get(ds, "VOILUTSequence")
    if sequence:
        try:
            if "LUTDescriptor" not in sequence[0] or "LUTData" not in sequence[0]:
                raise InputError("the first item has no LUT Descriptor and LUT Data")
            out = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        except Exception as exc:
            notes.append(f"VOI LUT ignored ({first_line(exc)})")
        else:
            notes.append("VOI LUT")
            return out
    window = _window(ds, notes)
    if window is None:
        return arr
    center, width, function = window
    # a clean view of the attributes the windowing reads: pydicom's own function reads (and writes) them on ``ds``
    view = Dataset()
    view.PhotometricInterpretation = photometric
    view.WindowCenter, view.WindowWidth, view.VOILUTFunction = center, width, function
    bits = _whole_number(ds, "BitsStored")
    view.BitsStored = bits if bits and 1 <= bits <= 32 else 16
    view.PixelRepresentation = 1 if _whole_number(ds, "PixelRepresentation") == 1 else 0
    view.update(used)
    try:
        out = apply_windowing(arr, view, index=0)
    except Exception as exc:
        notes.append(f"window ignored ({first_line(exc)})")
        return arr
    notes.append(f"window {center:g}/{width:g} {function}")
    return out


def to_display_grey(ds: Dataset, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Decode a single-frame DICOM image to the grey values a viewer shows, shape ``(rows, columns)``.

    Returns:
        ``(float32 array, notes)``: ``notes`` lists what was applied and what was ignored, for the run report.

    Raises:
        InputError: no pixel data, several frames, a size above ``max_pixels``, or pixel data that cannot be decoded
            (the message says which and why).
    """
    if "PixelData" not in ds:
        raise InputError(f"no pixel data ({describe_dicom(ds)})")
    frames, frames_note = number_of_frames(ds)
    if frames > 1:
        raise InputError(f"multi-frame image ({frames} frames); only single-frame radiographs are segmented")
    notes: list[str] = [frames_note] if frames_note else []
    if frames_note:  # pydicom decodes by the header's value: a broken one is removed from this (read-only) copy
        del ds["NumberOfFrames"]
    check_pixel_geometry(ds, max_pixels)
    try:
        arr = ds.pixel_array
    except BaseException as exc:  # pydicom raises many types; the message with the syntax is what a user needs
        if not is_input_failure(exc):
            raise
        arr = decode_with_gdcm(ds, exc)
        notes.append("decoded with GDCM")

    photometric = str(safe_get(ds, "PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except BaseException as exc:
            if not is_input_failure(exc):
                raise
            raise InputError(f"PALETTE COLOR image without a usable palette ({first_line(exc)})") from exc
        notes.append("palette colour")
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB (YBR is converted to RGB by pydicom)
        notes.append(f"{photometric[:20]} to grey")
        if arr.dtype == np.uint8:  # PIL's own fixed-point ITU-R 601 luma: identical to an RGB PNG of the same pixels
            r, g, b = (arr[..., i].astype(np.uint32) for i in range(3))
            return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.float32), notes
        return (arr.astype(np.float32) @ _LUMA).astype(np.float32), notes
    if arr.ndim != 2:
        raise InputError(
            f"the pixel data decodes to an array of shape {arr.shape}, not one grey image: Rows, Columns, Samples per "
            f"Pixel or Number of Frames do not match the pixel data ({describe_dicom(ds)})"
        )

    padding = _padding_pixels(arr, ds, notes)
    image = None if padding is None else ~padding
    arr, used = _apply_modality(arr, ds, notes)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        arr = _apply_voi(arr, ds, used, photometric, notes, image)
    arr = arr.astype(np.float32, copy=False)
    shape = str(safe_get(ds, "PresentationLUTShape", "") or "").strip().upper()
    # MONOCHROME1 is shown inverted, once: Presentation LUT Shape INVERSE is its standard pairing (PS3.3 C.8.11.6:
    # "output after inversion"), not a second inversion. On MONOCHROME2 an INVERSE shape inverts what is shown.
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
        values = arr if image is None else arr[image]
        if values.size and np.isfinite(values).any():
            # min + max - x maps the darkest value to the brightest and back; ScaleIntensity to [0, 1] afterwards
            # makes this exactly 1 - x of the MONOCHROME2 rendering
            arr = np.float32(np.nanmin(values)) + np.float32(np.nanmax(values)) - arr
        notes.append(f"{photometric} inverted" + (" (Presentation LUT Shape INVERSE)" if shape == "INVERSE" else ""))
    if padding is not None:
        # padding shows black, at the image's darkest value: out of the intensity range the bundle scales to [0, 1]
        arr[padding] = np.nanmin(arr[image])
    return arr, notes


def _padding_pixels(stored: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray | None:
    """The pixels Pixel Padding Value (0028,0120), with Pixel Padding Range Limit (0028,0121) when present, marks
    as padding (stored values, before any LUT: PS3.3 C.7.5.1.1.2), or ``None`` when there are none (or every pixel
    would be one: a value that names no padding)."""
    if "PixelPaddingValue" not in ds:
        return None
    found = _single_numbers(ds, ("PixelPaddingValue", "PixelPaddingRangeLimit"), "pixel padding", notes)
    if found is None or found[0] is None:
        return None
    value, limit = found
    low, high = sorted((value, value if limit is None else limit))
    padding = (stored >= low) & (stored <= high)
    count = int(padding.sum())
    if count == 0:
        return None
    if count == padding.size:
        notes.append(f"pixel padding {low:g} to {high:g} ignored (it covers every pixel)")
        return None
    where = f"{low:g}" if low == high else f"{low:g} to {high:g}"
    notes.append(f"pixel padding {where} ({count / padding.size:.0%} of the pixels) kept out of the intensity range")
    return padding


def decode_with_gdcm(ds: Dataset, failure: BaseException) -> np.ndarray:
    """The stored values of a file that pydicom's decoders refused, decoded by GDCM (``python-gdcm``) when it is
    installed: 12-bit JPEG Extended (process 4), which pylibjpeg's libjpeg rejects in files whose scan header other
    decoders accept, and which pydicom does not hand to GDCM.

    GDCM runs in a child process of its own (``fork``): on some corrupt codestreams it aborts the process it runs in,
    and one file must not stop a run.

    Raises:
        InputError: GDCM is not installed, or cannot decode the file either; the message says what pydicom's decoders
            said and what to install.
    """
    reason = f"cannot decode pixel data ({describe_dicom(ds)}): {first_line(failure)}"
    path = getattr(ds, "filename", None)
    if importlib.util.find_spec("gdcm") is None:
        raise InputError(f"{reason}; GDCM may decode it: pip install python-gdcm") from failure
    if not isinstance(path, str) or not os.path.isfile(path) or (_whole_number(ds, "SamplesPerPixel") or 1) != 1:
        raise InputError(reason) from failure
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: decode, send the array (or why not) back, and end without any clean-up of the parent's
        os.close(read)
        faulthandler.disable()  # an abort is the answer here, not a crash to report
        quiet = os.open(os.devnull, os.O_WRONLY)  # GDCM and its JPEG codecs print to the console; the report says why
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        try:
            message = pickle.dumps(_gdcm_stored_values(path))
        except BaseException as exc:  # noqa: B036 -- anything GDCM raises goes back as the reason
            message = pickle.dumps(f"{type(exc).__name__}: {first_line(exc)}")
        with os.fdopen(write, "wb") as pipe:
            pipe.write(message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read()
    _, status = os.waitpid(child, 0)
    found = pickle.loads(message) if message else f"GDCM stopped (exit status {status})"
    if isinstance(found, str):
        raise InputError(f"{reason}; GDCM cannot decode it either ({found})") from failure
    rows, columns = _whole_number(ds, "Rows"), _whole_number(ds, "Columns")
    if found.shape != (rows, columns):
        raise InputError(f"{reason}; GDCM decodes it to {found.shape}, not Rows x Columns {rows} x {columns}")
    return found


def _gdcm_stored_values(path: str) -> np.ndarray | str:
    """GDCM's decoding of a single-frame grey DICOM file: its stored values, or why it failed."""
    import gdcm

    for switch_off in (gdcm.Trace.WarningOff, gdcm.Trace.ErrorOff, gdcm.Trace.DebugOff):
        switch_off()  # GDCM prints to the console; the report says what happened
    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        return "it cannot read the file"
    image = reader.GetImage()
    dtypes = {
        gdcm.PixelFormat.UINT8: np.uint8,
        gdcm.PixelFormat.INT8: np.int8,
        gdcm.PixelFormat.UINT16: np.uint16,
        gdcm.PixelFormat.INT16: np.int16,
        gdcm.PixelFormat.UINT32: np.uint32,
        gdcm.PixelFormat.INT32: np.int32,
    }
    dtype = dtypes.get(image.GetPixelFormat().GetScalarType())
    columns, rows = image.GetDimension(0), image.GetDimension(1)
    buffer = image.GetBuffer()
    data = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer or b"")
    if dtype is None or len(data) != rows * columns * np.dtype(dtype).itemsize:
        return f"it decodes to {len(data)} bytes, not {rows} x {columns} pixels"
    return np.frombuffer(data, dtype).reshape(rows, columns).copy()


def _keep_gdcm_out_of_pydicom() -> None:
    """``python-gdcm`` is installed for :func:`decode_with_gdcm` alone. pydicom would otherwise try it first for JPEG
    pixel data (and encode RLE with it), and GDCM aborts the process it runs in on some corrupt data (found by the
    fuzz suite): pydicom keeps the decoders and encoders it had without it."""
    try:
        from pydicom.pixels import get_decoder, get_encoder
    except ImportError:  # pydicom 2.4 (MONAI Label's environment), where GDCM is not installed
        return
    for uid in pydicom.uid.AllTransferSyntaxes:
        for get in (get_decoder, get_encoder):
            try:
                get(uid).remove_plugin("gdcm")
            except (NotImplementedError, ValueError):  # no coder for this syntax, or no GDCM plugin in it
                continue


_keep_gdcm_out_of_pydicom()


class RadiographDicomReader(ImageReader):
    """Load single-frame radiograph DICOM files as grey images in MONAI's ``(x, y)`` layout, like ``PILReader``.

    See the module docstring for the pixel pipeline. Files are recognised by content (the ``DICM`` marker, or a
    dataset written without preamble and file meta information), whatever their name; any other file ending in
    ``.dcm``/``.dicom`` is tried with ``force=True``, so that its error says what is wrong with it.

    Meta data (besides MONAI's ``spatial_shape``, ``original_channel_dim`` and ``affine``): ``format`` ("DICOM"),
    ``pixel_spacing`` (``[row, column]`` mm, or NaN when unknown), ``spacing_source``, ``pixel_processing`` (what was
    applied and what was ignored), ``modality``, ``patient_orientation`` (e.g. ``"L\\F"``), ``sop_instance_uid``,
    ``rows``, ``columns``. The ``affine`` scales x by the column spacing and y by the row spacing (identity when
    unknown).

    Args:
        max_pixels: the largest Rows x Columns decoded; larger images (or headers and codestreams claiming them) fail
            before anything of their size is allocated.
        modalities: DICOM Modality values that are segmented (:func:`classify_dataset`).
        frontal_chest_only: refuse a file whose header says it is another body part or a lateral or oblique view
            (:func:`scripts.io.radiograph_view.header_view`) with :class:`~scripts.io.errors.NotARadiograph`; the
            header's evidence goes into the meta data (``view_evidence``) either way.
        kwargs: passed to ``pydicom.dcmread``.
    """

    suffixes = ("dcm", "dicom")

    def __init__(
        self,
        max_pixels: int = MAX_IMAGE_PIXELS,
        modalities: Sequence[str] = RADIOGRAPH_MODALITIES,
        frontal_chest_only: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        self.max_pixels = int(max_pixels)
        self.modalities = tuple(modalities)
        self.frontal_chest_only = bool(frontal_chest_only)
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file is DICOM by content (or has a DICOM extension)."""
        return all(is_dicom_file(f) or is_supported_format(f, self.suffixes) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> Dataset | list[Dataset]:
        """Read one or several files with pydicom (the pixel data of more than 1 MiB when it is decoded, in
        ``get_data``) and check that each is a radiograph to segment (:func:`classify_dataset`)."""
        options = {"defer_size": 1 << 20, **self.kwargs, **kwargs}
        datasets = []
        for name in ensure_tuple(data):
            name = os.fspath(name)
            if not os.path.isfile(name):
                raise FileNotFoundError(f"{name}: no such file")
            if os.path.getsize(name) == 0:
                raise InputError(f"{name}: empty file (0 bytes)")
            try:
                ds = read_dicom(name, self.max_pixels, **options)
            except InputError as exc:
                raise type(exc)(f"{name}: {exc}", step="reading the header") from exc
            try:
                classify_dataset(ds, self.modalities)
            except InputError as exc:
                raise type(exc)(f"{name}: {exc}", step=exc.step) from exc
            datasets.append(ds)
        return datasets if len(datasets) > 1 else datasets[0]

    def get_data(self, img: Dataset | Sequence[Dataset]) -> tuple[np.ndarray, dict]:
        """Decode the pixels; return ``(array (x, y) or (files, x, y), meta dict)`` (several files: stacked first)."""
        arrays, meta = [], {}
        for ds in img if isinstance(img, (list, tuple)) else [img]:  # a Dataset is iterable: no ensure_tuple
            name = getattr(ds, "filename", "<dataset>")
            verdict, evidence = header_view(ds)  # before decoding: a hand is refused without decoding it
            if self.frontal_chest_only and verdict not in (FRONTAL, UNKNOWN):
                raise NotARadiograph(f"{name}: {NOT_A_FRONTAL_CHEST}: {evidence}", step="reading the header")
            try:
                grey, notes = to_display_grey(ds, self.max_pixels)
            except InputError as exc:
                raise type(exc)(f"{name}: {exc}", step=exc.step) from exc
            arrays.append(grey.T)  # (rows, columns) -> MONAI's (x, y) = (columns, rows), as PILReader does
            if not meta:
                meta = self._meta(ds, grey.shape, notes, evidence)
        data = np.stack(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        return data, meta

    @staticmethod
    def _meta(ds: Dataset, shape: tuple[int, int], notes: list[str], view_evidence: str) -> dict:
        spacing, source = pixel_spacing(ds)
        affine = np.eye(4)
        if spacing is not None:
            affine[0, 0], affine[1, 1] = spacing[1], spacing[0]  # x runs along a row: column spacing
        orientation = safe_get(ds, "PatientOrientation") or []
        return {
            "format": "DICOM",
            MetaKeys.SPATIAL_SHAPE: np.asarray((shape[1], shape[0])),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel, as PILReader reports it
            MetaKeys.AFFINE: affine,
            "pixel_spacing": np.asarray(spacing if spacing else (np.nan, np.nan), dtype=np.float64),
            "spacing_source": source,
            "pixel_processing": "; ".join(notes),
            "modality": str(safe_get(ds, "Modality", "") or "")[:16],
            "patient_orientation": "\\".join(str(v)[:16] for v in ensure_tuple(orientation))[:64],
            "view_evidence": view_evidence,
            "sop_instance_uid": str(safe_get(ds, "SOPInstanceUID", "") or "")[:64],
            "dicom_header": clean_header(ds).to_json(),
            "rows": int(shape[0]),
            "columns": int(shape[1]),
        }
