"""One MONAI ``ImageReader`` for every radiograph file the bundle accepts, chosen by content: DICOM, PNG/JPEG/BMP/TIFF,
NIfTI.

Why one reader instead of a list of readers given to ``LoadImaged``: with user readers, MONAI's ``LoadImage`` tries
each reader and then every default reader (ITK, nibabel, ...) until one succeeds, and reports a failure as all their
tracebacks together. This reader picks the decoder from the file's content, so a broken file fails once, with the
decoder's own message naming the file and the problem. It also gives every format the same meta keys, so that
DICOM, PNG and NIfTI items can share a batch (MONAI's collate keeps only the meta keys all items have, and cannot
collate ``None`` values).

All formats come out as MONAI ``(x, y)`` = ``(columns, rows)`` grey arrays:

* DICOM: :class:`scripts.io.dicom.RadiographDicomReader` (display values, MONOCHROME1 inverted, spacing; the
  object checked to be a single-frame radiograph of an accepted modality, its header passed along as
  ``dicom_header``);
* PNG/JPEG/BMP/TIFF: MONAI's ``PILReader`` with :func:`to_grey` (as in training);
* NIfTI: MONAI's ``NibabelReader``; a trailing singleton third axis (``(x, y, 1)``) is dropped. The array is used as
  stored, so it must follow the same convention (x along a row, rows from the top), as MONAI and nibabel write it.

Bounded resources: every format's size is read from its header first (PIL's image plugins, nibabel's header, the
DICOM header and codestream, see :func:`scripts.io.dicom.check_pixel_geometry`) and an image above ``max_pixels`` fails
with :class:`~scripts.io.errors.ImageTooLarge` before it is decoded, so a file's memory never depends on what its
header claims. Pixel values that are not finite (NaN, infinite: float NIfTI or DICOM, a NaN rescale) are set to the
image's smallest finite value and counted in ``pixel_processing``; an image with no finite value at all fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from monai.config import PathLike
from monai.data import ImageReader, NibabelReader, PILReader
from monai.utils import MetaKeys, ensure_tuple
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from .dicom import MAX_IMAGE_PIXELS, RADIOGRAPH_MODALITIES, RadiographDicomReader, check_image_size
from .errors import InputError, NotARadiograph, first_line, is_input_failure
from .files import PIL_FORMATS, sniff_format
from .switches import is_on

__all__ = ["RadiographReader", "META_DEFAULTS", "to_grey", "grey_png_reader"]

# PIL modes that already hold one grey value per pixel and are kept as they are (8, 16 and 32 bit)
_GREY_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# PIL's image classes read only the header when constructed (``Image.open`` adds PIL's own size check, which would
# hide the size behind its error for images above PIL's limit)
_PIL_HEADERS = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
}
# NIfTI spatial units (xyzt_units & 7) -> mm
_NIFTI_UNITS_MM = {1: 1000.0, 2: 1.0, 3: 0.001}

# the meta keys every format yields, with the value used when a format has no such information
META_DEFAULTS = {
    "format": "",
    "pixel_spacing": (float("nan"), float("nan")),
    "spacing_source": "",
    "pixel_processing": "",
    "modality": "",
    "patient_orientation": "",
    "view_evidence": "",
    "sop_instance_uid": "",
    "dicom_header": "",
}


def to_grey(image: Image.Image) -> Image.Image:
    """Return a single-channel grey image from any PIL image a radiograph PNG/JPEG may be stored as.

    * palette (``P``/``PA``) images go through their palette: the Kaggle Shenzhen PNGs store grey levels as palette
      indices, and reading the raw indices gives many images in reversed grey scale;
    * RGB/RGBA/LA images (grey radiographs saved with R=G=B) become grey with ITU-R 601 luma, which returns the
      common value exactly when the channels are equal;
    * 1-bit images become 0/255; 8-bit, 16-bit and 32-bit grey images are returned unchanged (full bit depth kept).

    Used as the ``converter`` of MONAI's ``PILReader``.
    """
    if image.mode in _GREY_MODES:
        return image
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.convert("L")


def grey_png_reader() -> PILReader:
    """MONAI ``PILReader`` for PNG/JPEG/BMP radiographs and masks that always yields one grey channel."""
    return PILReader(converter=to_grey)


class _Unread:
    """What :meth:`RadiographReader.read` returns: the file and its format, decoded later in ``get_data``."""

    def __init__(self, path: str, kind: str | None) -> None:
        self.path, self.kind = path, kind


class RadiographReader(ImageReader):
    """Read DICOM, PNG/JPEG/BMP/TIFF and NIfTI radiographs as grey ``(x, y)`` arrays with uniform meta data.

    ``read`` only identifies the files; decoding happens in ``get_data``, so that errors are raised there with a
    clear message instead of sending ``LoadImage`` through its fall-back readers. Meta keys: MONAI's
    ``spatial_shape``, ``original_channel_dim``, ``affine``, plus ``format``, ``pixel_spacing`` (``[row, column]``
    mm, NaN when unknown), ``spacing_source``, ``pixel_processing``, ``modality``, ``patient_orientation``,
    ``sop_instance_uid`` and ``dicom_header`` (the DICOM header as DICOM JSON, for the outputs that copy it; empty
    strings when a format has no such information).

    Args:
        max_pixels: the largest image (rows x columns) decoded; a larger one fails with
            :class:`~scripts.io.errors.ImageTooLarge` before it is decoded (see the module docstring).
        modalities: DICOM Modality values that are segmented; another DICOM object is refused with
            :class:`~scripts.io.errors.NotARadiograph` (its report row is ``skipped``).
        frontal_chest_only: refuse, likewise, a DICOM file whose header says it shows another body part or a lateral
            or oblique view (a switch: ``"false"`` segments them; :mod:`scripts.io.radiograph_view`).
    """

    def __init__(
        self,
        max_pixels: int = MAX_IMAGE_PIXELS,
        modalities: Sequence[str] = RADIOGRAPH_MODALITIES,
        frontal_chest_only: bool | str = True,
    ) -> None:
        super().__init__()
        self.max_pixels = int(max_pixels)
        self.dicom = RadiographDicomReader(
            max_pixels=self.max_pixels, modalities=modalities, frontal_chest_only=is_on(frontal_chest_only)
        )
        self.pil = grey_png_reader()
        self.nifti = NibabelReader()
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            # PIL refuses images above its own limit (or twice it) on opening: a user who raised this reader's limit
            # raised it for PIL too
            Image.MAX_IMAGE_PIXELS = self.max_pixels

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(sniff_format(f) is not None for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> _Unread | list[_Unread]:
        files = [_Unread(os.fspath(f), sniff_format(f)) for f in ensure_tuple(data)]
        return files if len(files) > 1 else files[0]

    def get_data(self, img: _Unread | Sequence[_Unread]) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        for item in ensure_tuple(img):
            array, item_meta = self._load(item)
            arrays.append(array)
            meta = meta or item_meta
        return (np.stack(arrays, axis=0) if len(arrays) > 1 else arrays[0]), meta

    def _load(self, item: _Unread) -> tuple[np.ndarray, dict]:
        if not os.path.isfile(item.path):
            raise FileNotFoundError(f"{item.path}: no such file")
        if os.path.getsize(item.path) == 0:
            raise InputError(f"{item.path}: empty file (0 bytes)")
        if item.kind == "dicom":
            array, meta = self.dicom.get_data(self.dicom.read(item.path))
        elif item.kind in PIL_FORMATS:
            array, meta = self._load_pil(item.path, item.kind)
        elif item.kind == "nifti":
            array, meta = self._load_nifti(item.path)
        else:
            raise InputError(f"{item.path}: not a DICOM (no 'DICM' marker), PNG, JPEG, BMP, TIFF or NIfTI file")
        if array.ndim != 2:
            raise InputError(f"{item.path}: expected a 2D grey image, got an array of shape {array.shape}")
        array, note = _finite(array, item.path)
        if note:
            meta["pixel_processing"] = "; ".join(n for n in (meta.get("pixel_processing", ""), note) if n)
        out = {**META_DEFAULTS, **{k: meta[k] for k in META_DEFAULTS if k in meta}}
        out["pixel_spacing"] = np.asarray(out["pixel_spacing"], dtype=np.float64)
        out[MetaKeys.SPATIAL_SHAPE] = np.asarray(array.shape)
        out[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        out[MetaKeys.AFFINE] = np.asarray(meta.get(MetaKeys.AFFINE, np.eye(4)), dtype=np.float64)
        return array, out

    def _load_pil(self, path: str, kind: str) -> tuple[np.ndarray, dict]:
        try:
            with _PIL_HEADERS[kind](path) as header:
                columns, rows = header.size
        except Exception as exc:
            raise InputError(
                f"{path}: cannot read the {kind.upper()} header ({type(exc).__name__}: {first_line(exc)})"
            ) from exc
        with _naming(path):
            check_image_size(rows, columns, self.max_pixels, f"the {kind.upper()} image")
        try:
            array, meta = self.pil.get_data(self.pil.read(path))
        except BaseException as exc:
            if not is_input_failure(exc):
                raise
            raise InputError(f"{path}: cannot decode {kind.upper()} ({type(exc).__name__}: {first_line(exc)})") from exc
        return array, {MetaKeys.SPATIAL_SHAPE: meta[MetaKeys.SPATIAL_SHAPE], "format": kind.upper()}

    def _load_nifti(self, path: str) -> tuple[np.ndarray, dict]:
        try:
            image = self.nifti.read(path)
            shape = tuple(int(v) for v in image.shape)
        except BaseException as exc:
            if not is_input_failure(exc):
                raise
            message = f"{path}: unreadable NIfTI header ({type(exc).__name__}: {first_line(exc)})"
            raise InputError(message, step="") from exc
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 1):
            raise NotARadiograph(f"{path}: {len(shape)}D NIfTI of shape {shape}, not a 2D radiograph")
        with _naming(path):
            check_image_size(shape[1], shape[0], self.max_pixels, "the NIfTI image")
        try:
            array, header = self.nifti.get_data(image)
        except BaseException as exc:
            if not is_input_failure(exc):
                raise
            raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {first_line(exc)})") from exc
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        affine = np.asarray(header.get(MetaKeys.AFFINE, np.eye(4)), dtype=np.float64)
        meta = {MetaKeys.AFFINE: affine, "format": "NIFTI"}
        spacing = [float(np.linalg.norm(affine[:3, i])) for i in (0, 1)]  # x (along a row), y
        units = int(np.asarray(header.get("xyzt_units", 0))) & 7
        # NIfTI's unit code is often left unset (0) by converters that do write mm spacing: trust a non-unit spacing
        scale = _NIFTI_UNITS_MM.get(units, 1.0 if units == 0 and spacing != [1.0, 1.0] else None)
        if scale is not None and all(v > 0 for v in spacing):
            meta.update(pixel_spacing=(spacing[1] * scale, spacing[0] * scale), spacing_source="NIfTI affine")
        return np.asarray(array, dtype=np.float32), meta


def _finite(array: np.ndarray, path: str) -> tuple[np.ndarray, str]:
    """The array with non-finite values (NaN, infinite) set to its smallest finite value, and a note saying how many.

    Raises:
        InputError: no pixel is finite.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return array, ""
    finite = np.isfinite(array)
    if finite.all():
        return array, ""
    if not finite.any():
        raise InputError(f"{path}: no finite pixel value (every pixel is NaN or infinite)")
    count = int(array.size - np.count_nonzero(finite))
    return np.where(finite, array, array[finite].min()), f"{count} non-finite pixel values set to the minimum"


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """Put ``path`` in front of the message of an :class:`InputError` raised inside."""
    try:
        yield
    except InputError as exc:
        raise type(exc)(f"{path}: {exc}", step=exc.step) from exc
