"""Build real DICOM files with pydicom for the tests: radiographs in every pixel encoding the reader must handle, and
the non-image objects found next to them in PACS exports (SR, KOS, presentation states, PDF, DICOMDIR).

Compressed transfer syntaxes are encoded with what this environment has: RLE Lossless (pydicom), JPEG-LS (pyjpegls),
JPEG 2000 (pylibjpeg-openjpeg), JPEG Baseline (Pillow's encoder, encapsulated here) and JPEG Lossless SV1 (a small
encoder below: nothing installable here writes it). JPEG Extended (12-bit lossy) has no encoder here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)

SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
KEY_OBJECT_SELECTION = UID("1.2.840.10008.5.1.4.1.1.88.59")
GREYSCALE_PRESENTATION_STATE = UID("1.2.840.10008.5.1.4.1.1.11.1")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")


def _base(sop_class: str, modality: str, study_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "PHANTOM1"
    ds.PatientName = "Phantom^Lung"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    return ds


def radiograph(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
    signed: bool = False,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = None,
    modality: str = "DX",
    sop_class: str = DigitalXRayImageStorageForPresentation,
    study_uid: str | None = None,
    patient_orientation: tuple[str, str] | None = None,
) -> Dataset:
    """A single-frame (or, for a 3D ``pixels``, multi-frame) grey radiograph with native (uncompressed) pixels.

    ``pixels`` are the stored values, ``(rows, columns)``; ``bits_stored`` > 8 stores them in 16 bits.
    """
    ds = _base(sop_class, modality, study_uid)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUT Data: US (its VR is ambiguous)
        ds.VOILUTSequence = [item]
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    if patient_orientation is not None:
        ds.PatientOrientation = list(patient_orientation)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype[(ds.BitsAllocated, signed)])).tobytes()
    return ds


def rgb_secondary_capture(rgb: np.ndarray) -> Dataset:
    """An uncompressed RGB secondary capture (modality OT) of an ``(rows, columns, 3)`` uint8 image."""
    ds = _base(SECONDARY_CAPTURE, "OT")
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb.astype(np.uint8)).tobytes()
    return ds


def jpeg_baseline(pixels: np.ndarray, quality: int = 95) -> Dataset:
    """A JPEG Baseline (lossy, 8-bit) DX made with Pillow's encoder: grey, or YBR_FULL_422 colour when ``pixels`` is
    ``(rows, columns, 3)``."""
    colour = pixels.ndim == 3
    ds = radiograph(pixels[..., 0] if colour else pixels, bits_stored=8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB" if colour else "L").save(buffer, format="JPEG", quality=quality)
    if colour:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def jpeg_lossless_sv1(pixels: np.ndarray, bits_stored: int = 12) -> Dataset:
    """A JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, Selection Value 1) DX."""
    ds = radiograph(pixels, bits_stored=bits_stored)
    ds.PixelData = encapsulate([encode_jpeg_lossless(pixels, precision=bits_stored)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds


def encode_jpeg_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """Encode a grey image as ITU-T T.81 lossless JPEG (SOF3), predictor 1, point transform 0.

    One Huffman table codes the 17 difference categories with 5-bit codes each (valid, if not compact).
    """
    x = np.asarray(pixels, np.int64)
    rows, cols = x.shape
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]  # first row: the pixel to the left
    prediction[1:, 0] = x[:-1, 0]  # first column: the pixel above
    prediction[1:, 1:] = x[1:, :-1]  # elsewhere: selection value 1, the pixel to the left
    diff = (x - prediction) % 65536
    diff[diff > 32768] -= 65536

    out, accumulator, nbits = bytearray(), 0, 0

    def put(value: int, length: int) -> None:
        nonlocal accumulator, nbits
        accumulator = (accumulator << length) | (value & ((1 << length) - 1))
        nbits += length
        while nbits >= 8:
            nbits -= 8
            byte = (accumulator >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        accumulator &= (1 << nbits) - 1

    for d in diff.ravel().tolist():
        category = 16 if d == 32768 else abs(d).bit_length()
        put(category, 5)
        if 0 < category < 16:
            put(d if d > 0 else d - 1, category)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with ones

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof3 = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    bits = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = bytes([0x00]) + bits + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + segment(0xC3, sof3) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(out) + b"\xff\xd9"


def compressed(ds: Dataset, syntax: str) -> Dataset:
    """``ds`` compressed with pydicom's encoders (RLE Lossless, JPEG-LS, JPEG 2000), keeping its UIDs: pydicom's own
    RLE encoder, pyjpegls, pylibjpeg (GDCM, if installed, would be tried first, and aborts on some hostile pixels)."""
    plugins = {pydicom.uid.RLELossless: "pydicom", **dict.fromkeys(pydicom.uid.JPEGLSTransferSyntaxes, "pyjpegls")}
    ds.compress(syntax, generate_instance_uid=False, encoding_plugin=plugins.get(syntax, "pylibjpeg"))
    return ds


def structured_report(study_uid: str | None = None) -> Dataset:
    ds = _base(BASIC_TEXT_SR, "SR", study_uid)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    return ds


def key_object_selection(study_uid: str | None = None) -> Dataset:
    ds = _base(KEY_OBJECT_SELECTION, "KO", study_uid)
    ds.ValueType = "CONTAINER"
    return ds


def presentation_state(study_uid: str | None = None) -> Dataset:
    ds = _base(GREYSCALE_PRESENTATION_STATE, "PR", study_uid)
    ds.ContentLabel = "VIEW"
    return ds


def encapsulated_pdf(study_uid: str | None = None) -> Dataset:
    ds = _base(ENCAPSULATED_PDF, "DOC", study_uid)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble + ``DICM``), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicomdir(folder: Path, datasets: list[Dataset]) -> Path:
    """A DICOM media folder (``DICOMDIR`` plus the referenced files) written by pydicom's ``FileSet``."""
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for ds in datasets:
        fileset.add(ds)
    folder.mkdir(parents=True, exist_ok=True)
    fileset.write(folder)
    return folder / "DICOMDIR"
