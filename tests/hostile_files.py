"""Hostile inputs for batch inference, written with pydicom, PIL, nibabel and zlib into a folder: the kinds of file a
PACS export, a scraped archive or a broken disk puts next to good radiographs.

* :func:`write_good_files`: good radiographs (DX/CR, MONOCHROME1, 12-bit, compressed, PNG) whose masks must not change
  when hostile files sit beside them;
* :func:`write_hostile_tags`: hand-made hostile tag values (text where numbers belong, NaN/inf/zero values, wrong
  VRs, bits and samples that contradict each other, transfer syntaxes that do not match the pixel data);
* :func:`write_bombs`: decompression bombs (PNG, DICOM and JPEG 2000 headers claiming huge images, a real 20000 x 20000
  PNG of zeros);
* :func:`write_mutations`: seeded byte-level mutations of valid files (header byte flips, truncation, splices);
* :func:`write_odd_images`: PNG/JPEG/NIfTI oddities (1-bit, RGBA, 16-bit constant, header-only, CMYK, 3D/4D, NaN).

Every writer returns the paths it wrote. Nothing here is tuned to the bundle: the mutations are random (seeded) and the
hostile values are the ones the DICOM standard's value representations and common bugs make possible.
"""

from __future__ import annotations

import copy
import io
import math
import struct
import warnings
import zlib
from pathlib import Path

import dicom_factory as make
import nibabel
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from scripts.data.synthetic import synthetic_case

HUGE_SIDE = 60000


def phantom_pixels(seed: int, size: int = 160) -> np.ndarray:
    """Real-like grey pixels (a synthetic chest phantom), ``uint8`` ``(rows, columns)`` of about ``size`` pixels."""
    return synthetic_case(seed, min_size=size, max_size=size + 64)[0]


def write_good_files(folder: Path, seed: int = 0) -> list[Path]:
    """Good radiographs in the encodings users have: DX 8-bit, CR 12-bit MONOCHROME1, RLE, JPEG-LS, JPEG 2000,
    Deflated Explicit VR, PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, c = (phantom_pixels(seed + i) for i in range(3))
    wide = b.astype(np.uint16) * 16
    files = {
        "good_dx.dcm": make.radiograph(a, pixel_spacing=(0.2, 0.2)),
        "good_cr_mono1.dcm": make.radiograph(4095 - wide, bits_stored=12, photometric="MONOCHROME1", modality="CR"),
        "good_rle.dcm": make.compressed(make.radiograph(wide, bits_stored=12), RLELossless),
        "good_jpegls.dcm": make.compressed(make.radiograph(c, imager_pixel_spacing=(0.15, 0.15)), JPEGLSLossless),
        "good_j2k.dcm": make.compressed(make.radiograph(wide, bits_stored=12), JPEG2000Lossless),
    }
    deflated = make.radiograph(a)
    deflated.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    files["good_deflated.dcm"] = deflated
    paths = [make.save(ds, folder / name) for name, ds in files.items()]
    Image.fromarray(c).save(folder / "good.png")
    return paths + [folder / "good.png"]


class Raw:
    """An element value written as these exact bytes with this VR, whatever pydicom would make of them."""

    def __init__(self, vr: str, value: bytes | str) -> None:
        self.vr = vr
        self.value = value.encode("latin-1") if isinstance(value, str) else value
        if len(self.value) % 2:
            self.value += b" "


def encoded(ds: Dataset, elements: dict, syntax: str | None = None) -> bytes:
    """``ds`` as Part 10 bytes with ``elements`` replaced: ``None`` deletes, :class:`Raw` writes bytes, anything else
    is set through pydicom.

    The dataset is always encoded as Explicit VR Little Endian (encapsulated pixel data kept encapsulated); the file
    meta header names ``syntax`` (default: the dataset's own), so a header can claim a syntax the data is not in.
    """
    meta = ds.file_meta
    real = pydicom.uid.UID(str(meta.TransferSyntaxUID))
    if "PixelData" in ds:
        if real.is_compressed:
            ds["PixelData"].is_undefined_length = True
        if "or" in ds["PixelData"].VR:  # resolve OB/OW now: the elements it depends on may be deleted below
            ds["PixelData"].VR = "OB" if real.is_compressed or int(ds.get("BitsAllocated", 8)) <= 8 else "OW"
    raw = {}
    for keyword, value in elements.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if value is None or isinstance(value, Raw):
            if keyword in ds:
                del ds[keyword]
            if isinstance(value, Raw):  # tag, VR, 2-byte length, value: whatever that makes of the element
                header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + value.vr.encode("latin-1")
                raw[tag] = header + struct.pack("<H", len(value.value)) + value.value
        else:
            setattr(ds, keyword, value)
    # the dataset element by element (Explicit VR Little Endian), the raw elements in their place among them
    encoded_elements = dict(raw)
    for element in ds:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_data_element(buffer, element)
        encoded_elements.setdefault(element.tag, buffer.getvalue())
    meta = copy.deepcopy(meta)
    meta.TransferSyntaxUID = syntax or real
    header = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(header, meta, enforce_standard=True)
    body = b"".join(encoded_elements[tag] for tag in sorted(encoded_elements))
    return bytes(128) + b"DICM" + header.getvalue() + body


def hostile_tag_files(pixels: np.ndarray) -> dict[str, bytes]:
    """Radiographs with one hostile header value each (their pixels are fine unless the value breaks them)."""
    wide = pixels.astype(np.uint16) * 16

    def dx(**elements) -> bytes:
        return encoded(make.radiograph(wide, bits_stored=12), elements)

    def syntax(uid: str) -> bytes:
        """Native pixel data under a file meta header that names another transfer syntax."""
        return encoded(make.radiograph(wide, bits_stored=12), {}, syntax=uid)

    nan = Raw("DS", "NaN")
    return {
        # spacing that is not a usable number: the image is fine, areas fall back to pixels
        "spacing_text.dcm": dx(PixelSpacing=Raw("DS", "abc")),
        "spacing_wrong_vr.dcm": dx(PixelSpacing=Raw("US", struct.pack("<HH", 0, 7))),
        "spacing_zero.dcm": dx(PixelSpacing=[0, 0]),
        "spacing_negative.dcm": dx(PixelSpacing=[-0.2, 0.2]),
        "spacing_nan.dcm": dx(PixelSpacing=Raw("DS", "NaN\\0.2")),
        "spacing_inf.dcm": dx(ImagerPixelSpacing=Raw("DS", "inf\\inf")),
        "spacing_one_value.dcm": dx(PixelSpacing=Raw("DS", "0.2")),
        "magnification_valid.dcm": dx(ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=1.25),
        "magnification_nan.dcm": dx(ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=nan),
        "magnification_text.dcm": dx(
            ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=Raw("DS", "big")
        ),
        "magnification_zero.dcm": dx(ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=0),
        # display values that are not valid: use what is valid, list what was ignored
        "slope_nan.dcm": dx(RescaleSlope=nan, RescaleIntercept=0),
        "slope_zero.dcm": dx(RescaleSlope=0, RescaleIntercept=0),
        "slope_text.dcm": dx(RescaleSlope=Raw("DS", "one"), RescaleIntercept=0),
        "intercept_inf.dcm": dx(RescaleSlope=1, RescaleIntercept=Raw("DS", "inf")),
        "window_width_zero.dcm": dx(WindowCenter=2000, WindowWidth=0),
        "window_nan.dcm": dx(WindowCenter=nan, WindowWidth=nan),
        "window_inf.dcm": dx(WindowCenter=2000, WindowWidth=Raw("DS", "inf")),
        "window_text.dcm": dx(WindowCenter=Raw("DS", "lung"), WindowWidth=Raw("DS", "wide")),
        "window_lists_unequal.dcm": dx(WindowCenter=[2000, 1000], WindowWidth=[4000]),
        "window_function_unknown.dcm": dx(WindowCenter=2000, WindowWidth=4000, VOILUTFunction="SPIRAL"),
        "voi_lut_empty.dcm": dx(VOILUTSequence=[Dataset()]),
        "nan_everywhere.dcm": dx(
            RescaleSlope=nan,
            RescaleIntercept=nan,
            WindowCenter=nan,
            WindowWidth=nan,
            PixelSpacing=Raw("DS", "NaN\\NaN"),
        ),
        # pixel descriptions that contradict the pixel data
        "bits_stored_over_allocated.dcm": dx(BitsStored=20),
        "bits_allocated_odd.dcm": dx(BitsAllocated=12),
        "bits_allocated_zero.dcm": dx(BitsAllocated=0),
        "high_bit_wrong.dcm": dx(HighBit=30),
        "samples_three_mono.dcm": dx(SamplesPerPixel=3),
        "samples_zero.dcm": dx(SamplesPerPixel=0),
        "photometric_unknown.dcm": dx(PhotometricInterpretation="HSV"),
        "photometric_missing.dcm": dx(PhotometricInterpretation=None),
        "palette_without_lut.dcm": dx(PhotometricInterpretation="PALETTE COLOR"),
        "rows_zero.dcm": dx(Rows=0),
        "columns_wrong.dcm": dx(Columns=int(pixels.shape[1]) + 7),
        "rows_text.dcm": dx(Rows=Raw("US", b"\xff")),
        "frames_text.dcm": dx(NumberOfFrames=Raw("IS", "lots")),
        "frames_zero.dcm": dx(NumberOfFrames=0),
        "frames_negative.dcm": dx(NumberOfFrames=-3),
        "frames_huge.dcm": dx(NumberOfFrames=2**31 - 1),
        "no_pixel_data.dcm": dx(PixelData=None),
        "sop_class_missing.dcm": dx(SOPClassUID=None),
        "uids_missing.dcm": dx(StudyInstanceUID=None, SeriesInstanceUID=None),
        "modality_binary.dcm": dx(Modality=Raw("CS", b"\x00\xff")),
        "patient_name_binary.dcm": dx(PatientName=Raw("PN", b"\xff\xfe\x00bad")),
        "study_date_bad.dcm": dx(StudyDate=Raw("DA", "2026-13-45")),
        "orientation_garbage.dcm": dx(PatientOrientation=Raw("CS", "Q\\Z\\X")),
        "view_position_binary.dcm": dx(ViewPosition=Raw("CS", b"\x00")),
        "instance_number_text.dcm": dx(InstanceNumber=Raw("IS", "one")),
        # an unknown VR after the first element (pydicom reads the first to tell explicit from implicit VR), on an
        # element read later: pydicom raises NotImplementedError only when the value is converted
        "vr_unknown.dcm": dx(ImageType=["ORIGINAL", "PRIMARY"], SOPClassUID=Raw("U1", "1.2.840.10008.5.1.4.1.1.1.1")),
        # transfer syntax that does not match the pixel data
        "syntax_j2k_native_data.dcm": syntax(JPEG2000Lossless),
        "syntax_rle_native_data.dcm": syntax(RLELossless),
        "syntax_unknown.dcm": syntax("1.2.3.4.5.6.7"),
    }


def write_hostile_tags(folder: Path, seed: int = 0) -> list[Path]:
    """Every :func:`hostile_tag_files` file, and one whose element length runs past the end of the file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in hostile_tag_files(phantom_pixels(seed + 10)).items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    good = encoded(make.radiograph(phantom_pixels(seed + 11)), {})
    position = good.index(b"\x10\x00\x10\x00PN")
    (folder / "length_past_end.dcm").write_bytes(good[: position + 6] + b"\xf0\xff" + good[position + 8 :])
    return paths + [folder / "length_past_end.dcm"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, bit_depth: int = 8, idat: bytes = b"") -> bytes:
    """A grey PNG whose header claims ``width`` x ``height`` pixels, with ``idat`` as its (compressed) pixel data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + (_png_chunk(b"IDAT", idat) if idat else b"")
    return b"\x89PNG\r\n\x1a\n" + chunks + _png_chunk(b"IEND", b"")


def zeros_png(side: int) -> bytes:
    """A real, valid ``side`` x ``side`` 8-bit PNG of zeros, compressed row by row (never held in memory whole)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte 0, then the row's pixels
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    return png_claiming(side, side, idat=b"".join(parts))


def _patch_j2k_size(codestream: bytes, side: int) -> bytes:
    """The JPEG 2000 codestream with its image and tile size (SIZ marker) set to ``side`` x ``side``."""
    siz = codestream.index(b"\xff\x51")
    # SIZ: marker, Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz (32-bit big-endian)
    patched = bytearray(codestream)
    patched[siz + 6 : siz + 14] = struct.pack(">II", side, side)
    patched[siz + 22 : siz + 30] = struct.pack(">II", side, side)
    return bytes(patched)


def write_bombs(folder: Path, seed: int = 0) -> list[Path]:
    """Files whose headers claim far more pixels than they hold, and one real huge image."""
    folder.mkdir(parents=True, exist_ok=True)
    small = phantom_pixels(seed + 20)
    paths = {
        "claims_60000.png": png_claiming(HUGE_SIDE, HUGE_SIDE, idat=zlib.compress(b"\x00" * 1000)),
        "zeros_20000.png": zeros_png(20000),
    }
    for name, data in paths.items():
        (folder / name).write_bytes(data)
    # Rows x Columns x 16 bits = 8 GB, 5 MB of pixel data
    claim = make.radiograph(small.astype(np.uint16), bits_stored=12)
    claim.Rows, claim.Columns = 65535, 65535
    claim.PixelData = bytes(5 * 2**20)
    make.save(claim, folder / "claims_8gb.dcm")
    # a JPEG 2000 codestream that claims a 60000 x 60000 canvas inside a DICOM of the small image's size
    j2k = make.compressed(make.radiograph(small), JPEG2000Lossless)
    frame = next(pydicom.encaps.generate_frames(j2k.PixelData, number_of_frames=1))
    j2k.PixelData = pydicom.encaps.encapsulate([_patch_j2k_size(frame, HUGE_SIDE)])
    make.save(j2k, folder / "j2k_claims_60000.dcm")
    # the same codestream bomb as the DICOM's own size, so only the codestream can tell
    j2k_both = make.compressed(make.radiograph(small), JPEG2000Lossless)
    j2k_both.Rows, j2k_both.Columns = HUGE_SIDE, HUGE_SIDE
    j2k_both.PixelData = pydicom.encaps.encapsulate([_patch_j2k_size(frame, HUGE_SIDE)])
    make.save(j2k_both, folder / "j2k_and_header_claim_60000.dcm")
    (folder / "deflate_bomb.dcm").write_bytes(deflate_bomb(small, 300 << 20))
    return [folder / n for n in paths] + [
        folder / "deflate_bomb.dcm",
        folder / "claims_8gb.dcm",
        folder / "j2k_claims_60000.dcm",
        folder / "j2k_and_header_claim_60000.dcm",
    ]


def deflate_bomb(pixels: np.ndarray, inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of ``pixels`` whose dataset inflates to ``inflated_bytes`` (a private
    element of zeros), compressed as a stream (never held in memory whole)."""
    data = encoded(make.radiograph(pixels), {}, syntax=pydicom.uid.DeflatedExplicitVRLittleEndian)
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    body = data[meta_end:]
    position = body.index(b"\x10\x00\x10\x00")  # (0010,0010): the private group 0009 goes just before it
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body[:position])]
    parts.append(compressor.compress(b"\x09\x00\x10\x00LO\x06\x00BOMB  "))  # private creator
    parts.append(compressor.compress(b"\x09\x00\x00\x10OB\x00\x00" + struct.pack("<I", inflated_bytes)))
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(inflated_bytes >> 20)]
    parts += [compressor.compress(body[position:]), compressor.flush()]
    return data[:meta_end] + b"".join(parts)


def _pixel_data_offset(data: bytes) -> int:
    """Byte offset of the Pixel Data element (7FE0,0010) in a little-endian DICOM file, or the file's length."""
    position = data.rfind(b"\xe0\x7f\x10\x00")
    return position if position > 132 else len(data)


def mutate(data: bytes, other: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of a DICOM file's bytes: flip header bytes, truncate, or splice with ``other``."""
    kind = rng.choice(["flip", "flip", "truncate", "splice"])
    if len(data) < 2:
        return "truncate", data
    if kind == "flip":
        start = min(132, len(data) - 1)
        end = max(start + 1, min(len(data), _pixel_data_offset(data) + 12))
        mutated = bytearray(data)
        for position in rng.integers(start, end, size=int(rng.integers(1, 9))):
            mutated[position] = int(rng.integers(0, 256))
        return "flip", bytes(mutated)
    if kind == "truncate":
        return "truncate", data[: int(rng.integers(1, len(data)))]
    cut = int(rng.integers(min(132, len(data) - 1), len(data)))
    return "splice", data[:cut] + other[int(rng.integers(0, max(1, len(other)))) :]


def write_mutations(folder: Path, sources: list[Path], count: int, seed: int) -> list[Path]:
    """``count`` seeded random mutations of the DICOM ``sources`` (see :func:`mutate`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blobs = [p.read_bytes() for p in sources]
    paths = []
    for index in range(count):
        first, second = rng.choice(len(blobs), size=2)
        kind, data = mutate(blobs[first], blobs[second], rng)
        path = folder / f"mutation_{index:03d}_{kind}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def write_odd_images(folder: Path, seed: int = 0) -> list[Path]:
    """PNG/JPEG/NIfTI files that decoders treat differently: bit depths, alpha, CMYK, constant images, truncation."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = phantom_pixels(seed + 30)
    images = {
        "one_bit.png": Image.fromarray(pixels > 100),
        "rgba.png": Image.fromarray(np.dstack([pixels] * 3 + [np.full_like(pixels, 128)]), "RGBA"),
        "constant_16bit.png": Image.fromarray(np.full(pixels.shape, 40000, np.uint16)),
        "constant_black.png": Image.fromarray(np.zeros(pixels.shape, np.uint8)),
        "constant_white.jpg": Image.fromarray(np.full(pixels.shape, 255, np.uint8)),
        "cmyk.jpg": Image.fromarray(pixels).convert("CMYK"),
        "progressive.jpg": Image.fromarray(pixels),
        "one_pixel.png": Image.fromarray(np.zeros((1, 1), np.uint8)),
        "one_row.png": Image.fromarray(pixels[:1]),
        "palette.png": Image.fromarray(pixels).convert("P"),
    }
    paths = []
    for name, image in images.items():
        options = {"progressive": True} if name == "progressive.jpg" else {}
        image.save(folder / name, **options)
        paths.append(folder / name)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    png = encoded.getvalue()
    (folder / "header_only.png").write_bytes(png[: png.index(b"IDAT") - 4])
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG")
    (folder / "truncated.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 3])
    paths += [folder / "header_only.png", folder / "truncated.png", folder / "truncated.jpg"]
    volumes = {
        "volume_3d.nii.gz": np.zeros((32, 32, 8), np.float32),
        "volume_4d.nii.gz": np.zeros((16, 16, 4, 3), np.float32),
        "nan_2d.nii.gz": np.full((64, 64), math.nan, np.float32),
        "slice_2d.nii.gz": pixels.T.astype(np.float32),
    }
    for name, volume in volumes.items():
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), folder / name)
        paths.append(folder / name)
    header = nibabel.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4))
    header.header.set_data_shape((32000, 32000))  # NIfTI-1 sides are 16-bit: 4 GB of float32
    (folder / "claims_huge.nii").write_bytes(header.header.binaryblock + b"\x00" * 4 + bytes(1024))
    (folder / "header_only.nii").write_bytes(header.header.binaryblock)
    return paths + [folder / "claims_huge.nii", folder / "header_only.nii"]
