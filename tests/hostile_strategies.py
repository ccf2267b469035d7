"""Hypothesis strategies for hostile input files: each strategy draws a *recipe* (what to build), and
:func:`materialise` turns it into bytes, so that Hypothesis can shrink a failure down to the one tag value or byte that
matters.

* :func:`hostile_dicoms`: a radiograph built from real-like pixel data (a synthetic chest phantom) with tag values
  drawn from hostile ranges: any VR, any length, Rows/Columns, Bits Allocated/Stored/High Bit, Samples per Pixel,
  Photometric Interpretation, Number of Frames, spacing, rescale, window; and a transfer syntax drawn independently of
  how the pixel data is really stored (native or compressed);
* :func:`mutated_dicoms`: a valid CR/DX file (every encoding) with seeded byte-level mutations: header byte flips,
  truncation at any byte, a splice with another file;
* :func:`odd_images`: PNG/JPEG/BMP/TIFF/NIfTI with every PIL mode a radiograph may come in (1-bit, 8/16-bit grey,
  RGB, RGBA, LA, palette, CMYK), constant images, tiny sizes, truncation at any byte;
* :func:`hostile_files`: any of the above.
"""

from __future__ import annotations

import functools
import io
import struct

import dicom_factory as make
import hostile_files as hostile
import nibabel
import numpy as np
import pydicom
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

__all__ = ["hostile_dicoms", "mutated_dicoms", "odd_images", "hostile_files", "materialise"]

# elements whose values the readers, the report and the SEG writer use, with their VR
FUZZED_ELEMENTS = {
    "Rows": "US",
    "Columns": "US",
    "BitsAllocated": "US",
    "BitsStored": "US",
    "HighBit": "US",
    "SamplesPerPixel": "US",
    "PixelRepresentation": "US",
    "PlanarConfiguration": "US",
    "PhotometricInterpretation": "CS",
    "NumberOfFrames": "IS",
    "PixelSpacing": "DS",
    "ImagerPixelSpacing": "DS",
    "EstimatedRadiographicMagnificationFactor": "DS",
    "RescaleSlope": "DS",
    "RescaleIntercept": "DS",
    "WindowCenter": "DS",
    "WindowWidth": "DS",
    "VOILUTFunction": "CS",
    "Modality": "CS",
    "SOPClassUID": "UI",
    "SOPInstanceUID": "UI",
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "PatientName": "PN",
    "PatientID": "LO",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "PatientOrientation": "CS",
    "ViewPosition": "CS",
    "InstanceNumber": "IS",
    "SpecificCharacterSet": "CS",
}
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    "1.2.3.4.5",  # not a transfer syntax
)
# how the pixel data is really stored (independent of the transfer syntax the header names)
STORAGE = ("native", "rle", "jpegls", "j2k")

NUMBER_TEXTS = ("0", "-1", "1", "0.2", "NaN", "inf", "-inf", "1e308", "-0", "abc", "1\\2\\3", "0.2\\0.2", "", " ")
_ANY_VR = ("US", "SS", "UL", "DS", "IS", "CS", "LO", "PN", "UI", "DA", "OB", "UN", "FD", "U1", "\x00\x00")


@functools.lru_cache(maxsize=64)
def _pixels(seed: int, size: int, bits: int) -> np.ndarray:
    image = hostile.phantom_pixels(seed, size)
    return image if bits == 8 else image.astype(np.uint16) * (2 ** (bits - 8))


@functools.lru_cache(maxsize=64)
def _stored(seed: int, size: int, bits: int, storage: str) -> tuple[bytes, str]:
    """The pixel data of a phantom (``(bytes, the syntax it is really in)``), compressed with pydicom's encoders."""
    ds = make.radiograph(_pixels(seed, size, bits), bits_stored=bits)
    syntax = {"native": ExplicitVRLittleEndian, "rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}
    if storage != "native":
        make.compressed(ds, syntax[storage])
    return bytes(ds.PixelData), syntax[storage]


@st.composite
def element_values(draw, vr: str):
    """A hostile value for an element of VR ``vr``: delete it, a number or text as bytes, random bytes, any VR."""
    kind = draw(st.sampled_from(["delete", "text", "bytes", "number"]))
    if kind == "delete":
        return None
    written_vr = draw(st.sampled_from((vr,) * 4 + _ANY_VR))
    if kind == "text":
        value = draw(st.sampled_from(NUMBER_TEXTS) | st.text(st.characters(codec="latin-1"), max_size=20))
        return hostile.Raw(written_vr, value)
    if kind == "bytes":
        return hostile.Raw(written_vr, draw(st.binary(max_size=16)))
    number = draw(st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 64, 255, 65535]))
    return hostile.Raw(written_vr, struct.pack("<H", number) if written_vr in ("US", "SS") else str(number))


@st.composite
def hostile_dicoms(draw) -> dict:
    """A recipe for a radiograph DICOM with hostile tag values and a possibly mismatched transfer syntax."""
    keywords = draw(st.lists(st.sampled_from(sorted(FUZZED_ELEMENTS)), max_size=4, unique=True))
    return {
        "kind": "dicom",
        "seed": draw(st.integers(0, 20)),
        "size": draw(st.sampled_from([48, 96, 160])),
        "bits": draw(st.sampled_from([8, 12, 16])),
        "photometric": draw(st.sampled_from(["MONOCHROME2", "MONOCHROME1"])),
        "storage": draw(st.sampled_from(STORAGE)),
        "syntax": draw(st.sampled_from((None,) * 6 + SYNTAXES)),  # None: the syntax the data is really in
        "elements": {k: draw(element_values(FUZZED_ELEMENTS[k])) for k in keywords},
        "extension": draw(st.sampled_from([".dcm", "", ".DCM", ".img"])),
    }


@st.composite
def mutated_dicoms(draw) -> dict:
    """A recipe for seeded byte-level mutations of a valid DICOM file (any of the good encodings)."""
    return {
        "kind": "mutation",
        "source": draw(st.integers(0, 4)),
        "other": draw(st.integers(0, 4)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "rounds": draw(st.integers(1, 3)),
    }


@st.composite
def odd_images(draw) -> dict:
    """A recipe for a PNG/JPEG/BMP/TIFF/NIfTI file in an unusual mode, size or state."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "NIFTI"]))
    modes = {
        "PNG": ["1", "L", "I;16", "RGB", "RGBA", "LA", "P"],
        "JPEG": ["L", "RGB", "CMYK"],
        "BMP": ["1", "L", "RGB"],
        "TIFF": ["1", "L", "I;16", "F", "RGB"],
        "NIFTI": ["float32", "uint8", "int16", "nan", "3d", "4d"],
    }
    return {
        "kind": "image",
        "format": fmt,
        "mode": draw(st.sampled_from(modes[fmt])),
        "rows": draw(st.integers(1, 200)),
        "columns": draw(st.integers(1, 200)),
        "constant": draw(st.booleans()),
        "seed": draw(st.integers(0, 20)),
        "truncate": draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
    }


def hostile_files():
    """Any hostile file recipe."""
    return st.one_of(hostile_dicoms(), mutated_dicoms(), odd_images())


@functools.lru_cache(maxsize=1)
def _good_sources() -> tuple[bytes, ...]:
    """Five valid files to mutate: DX 8-bit, CR 12-bit MONOCHROME1, RLE, JPEG-LS, JPEG 2000."""
    a, b = hostile.phantom_pixels(40, 96), hostile.phantom_pixels(41, 96)
    wide = b.astype(np.uint16) * 16
    datasets = [
        make.radiograph(a, pixel_spacing=(0.2, 0.2)),
        make.radiograph(4095 - wide, bits_stored=12, photometric="MONOCHROME1", modality="CR"),
        make.compressed(make.radiograph(wide, bits_stored=12), RLELossless),
        make.compressed(make.radiograph(a), JPEGLSLossless),
        make.compressed(make.radiograph(wide, bits_stored=12), JPEG2000Lossless),
    ]
    return tuple(hostile.encoded(ds, {}) for ds in datasets)


def materialise(recipe: dict) -> tuple[str, bytes]:
    """``(file name extension, bytes)`` of a recipe from the strategies above."""
    if recipe["kind"] == "mutation":
        rng = np.random.default_rng(recipe["seed"])
        sources = _good_sources()
        data = sources[recipe["source"]]
        for _ in range(recipe["rounds"]):
            data = hostile.mutate(data, sources[recipe["other"]], rng)[1]
        return ".dcm", data
    if recipe["kind"] == "dicom":
        return recipe["extension"], _dicom(recipe)
    return _image(recipe)


def _dicom(recipe: dict) -> bytes:
    pixels = _pixels(recipe["seed"], recipe["size"], recipe["bits"])
    if recipe["photometric"] == "MONOCHROME1":
        pixels = pixels.max() - pixels
    ds = make.radiograph(pixels, bits_stored=recipe["bits"], photometric=recipe["photometric"])
    data, real_syntax = _stored(recipe["seed"], recipe["size"], recipe["bits"], recipe["storage"])
    ds.PixelData = data
    syntax = recipe["syntax"] or real_syntax
    if pydicom.uid.UID(real_syntax).is_compressed:
        ds["PixelData"].VR = "OB"
    return hostile.encoded(ds, recipe["elements"], syntax=syntax)


def _image(recipe: dict) -> tuple[str, bytes]:
    rng = np.random.default_rng(recipe["seed"])
    shape = (recipe["rows"], recipe["columns"])
    grey = np.full(shape, 77, np.uint8) if recipe["constant"] else rng.integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    if recipe["format"] == "NIFTI":
        mode = recipe["mode"]
        volume = {
            "float32": grey.astype(np.float32),
            "uint8": grey,
            "int16": grey.astype(np.int16) * 100 - 5000,
            "nan": np.where(grey > 128, np.nan, grey).astype(np.float32),
            "3d": np.stack([grey] * 3, axis=-1),
            "4d": grey[..., None, None].repeat(2, axis=2).repeat(2, axis=3),
        }[mode]
        image = nibabel.Nifti1Image(volume, np.eye(4))
        data = image.header.binaryblock + b"\x00" * 4 + np.ascontiguousarray(volume.T).tobytes()
        extension = ".nii"
    else:
        mode = recipe["mode"]
        if mode == "I;16":
            picture = Image.fromarray(grey.astype(np.uint16) * 257)
        elif mode == "F":
            picture = Image.fromarray(grey.astype(np.float32))
        else:
            picture = Image.fromarray(grey).convert(mode)
        picture.save(buffer, format=recipe["format"])
        data = buffer.getvalue()
        extension = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}[recipe["format"]]
    if recipe["truncate"] is not None:
        data = data[: int(len(data) * recipe["truncate"])]
    return extension, data
