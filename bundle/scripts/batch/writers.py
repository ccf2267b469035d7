"""Write a case's outputs: mask PNG, mask NIfTI, DICOM Segmentation (highdicom), overlay JPEG.

Every file is written to a temporary name in its final folder and renamed into place (``os.replace``), so a reader
or a resumed run never sees a half-written file. Output names come from :func:`output_stem`: path components are
reduced to ``[A-Za-z0-9._-]``, cannot start with a dot, and :func:`inside` refuses any path that resolves outside the
output folder (``..``, absolute paths, symbolic links), so nothing derived from a file name or a DICOM tag can escape
it. Masks here are 2D ``(rows, columns)`` arrays, the DICOM/PIL layout.
"""

from __future__ import annotations

import io
import logging
import os
import re

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ..io.dicom import clean_header
from ..io.files import atomic_write, image_stem
from ..lungs import erode, lung_box

__all__ = [
    "output_stem",
    "inside",
    "write_mask_png",
    "write_mask_nifti",
    "write_overlay",
    "write_dicom_seg",
    "seg_sop_uid",
    "seg_source",
]

# highdicom logs every module it copies at INFO, several lines per SEG: keep batch logs readable unless the user
# configured its logger
if logging.getLogger("highdicom").level == logging.NOTSET:
    logging.getLogger("highdicom").setLevel(logging.WARNING)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ORIENTATION = re.compile(r"[LRAPHF]{1,3}")  # one Patient Orientation value: anatomical directions (PS3.3 C.7.6.1.1.1)
_MAX_COMPONENT = 64
_Z_RLE = 3  # zlib's Z_RLE strategy
# attributes highdicom copies from the source image that DICOM allows to be empty (Type 2) but pydicom cannot
# copy when they are absent, as in anonymised exports
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# SNOMED CT codes of the segmented structures
_SEGMENTS = {"lung": ("39607008", "Lung"), "right": ("3341006", "Right lung"), "left": ("44029006", "Left lung")}


def _safe_component(text: str) -> str:
    text = _UNSAFE.sub("_", text).lstrip(".") or "_"
    return text[:_MAX_COMPONENT]


def output_stem(input_name: str, key: str) -> str:
    """The relative path (without suffix) of a case's outputs: the input's folders and name made safe, plus
    ``key[:8]`` so that inputs whose safe names coincide (``a b.png``/``a_b.png``, ``x.png``/``x.dcm``) stay apart.

    Args:
        input_name: the input's path relative to the searched folder (any string).
        key: the input's unique key (:func:`scripts.io.discovery.classify_file`).
    """
    parts = [p for p in re.split(r"[\\/]+", input_name) if p not in ("", ".", "..")] or ["input"]
    name = image_stem(parts[-1])
    folders = [_safe_component(p) for p in parts[:-1]]
    return "/".join(folders + [f"{_safe_component(name)}_{key[:8]}"])


def inside(output_dir: str, relative: str) -> str:
    """Return ``output_dir/relative`` as an absolute path, or raise ``ValueError`` if it resolves outside
    ``output_dir`` (after following symbolic links)."""
    root = os.path.realpath(output_dir)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"refusing to write outside the output folder: {relative!r}")
    return path


def _save_image(image: Image.Image, path: str, **params) -> None:
    """Encode ``image`` in memory, then write it with Python's file object. Pillow writing to a file itself ignores a
    short write: the last block of a file cut by a full disk or a file-size limit was lost without an error
    (measured: a truncated overlay recorded as ``ok``); Python's writer retries it, and the error surfaces."""
    buffer = io.BytesIO()
    image.save(buffer, **params)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def write_mask_png(path: str, mask: np.ndarray) -> str:
    """Write a 2D ``(rows, columns)`` mask as an 8-bit PNG: 255 where ``mask`` is non-zero (any lung), else 0."""
    image = Image.fromarray((np.asarray(mask) > 0).view(np.uint8) * np.uint8(255), mode="L")
    # a binary mask is long runs of one value: zlib's run-length strategy at its fastest level writes it 3x faster
    # than the default settings and half the size of the fastest level's default strategy
    return atomic_write(path, lambda tmp: _save_image(image, tmp, format="PNG", compress_level=1, compress_type=_Z_RLE))


def write_mask_nifti(path: str, mask: np.ndarray, affine: np.ndarray) -> str:
    """Write a 2D ``(rows, columns)`` label mask as NIfTI in MONAI's ``(x, y)`` layout with ``affine`` (mm)."""
    import nibabel

    image = nibabel.Nifti1Image(np.ascontiguousarray(np.asarray(mask, np.uint8).T), np.asarray(affine, np.float64))
    image.header.set_xyzt_units("mm")
    return atomic_write(path, lambda tmp: nibabel.save(image, tmp))


def write_overlay(path: str, image: np.ndarray, mask: np.ndarray, quality: int = 90) -> str:
    """Write the grey ``image`` (``(rows, columns)`` uint8) with the lung contour drawn on it, as a JPEG.

    An overlay is for eyes, not analysis: JPEG (quality 90) is several times faster to write and smaller than PNG, and
    with the usual 4:2:0 chroma subsampling the contour looks as with none, 3 ms sooner on a 1024-pixel image.
    ``mask`` (``(rows, columns)`` labels, any size) is resized to the image (nearest). Contours, about one 400th of the
    long side thick, are drawn where the lungs are (their bounding box): the region minus its erosion
    (:func:`scripts.lungs.erode`); yellow for a binary mask; green for the right lung (label 1) and orange for the left
    lung (label 2) when sides are labelled.
    """
    image = np.asarray(image, np.uint8)
    if image.T.flags.c_contiguous and not image.flags.c_contiguous:  # a transposed view, as MONAI's (x, y) arrays give
        grey = Image.fromarray(image.T, mode="L").transpose(Image.Transpose.TRANSPOSE)  # twice as fast as NumPy's copy
    else:
        grey = Image.fromarray(image, mode="L")
    labels = np.asarray(mask, np.uint8)
    if labels.shape != (grey.height, grey.width):
        labels = np.asarray(Image.fromarray(labels).resize(grey.size, Image.NEAREST))
    picture = Image.merge("RGB", (grey, grey, grey))
    thickness = max(1, round(max(grey.size) / 400))
    box = lung_box(labels, margin=1)
    if box is not None:
        labels = labels[box]
        corner = (box[1].start, box[0].start)  # (x, y) of the box in the picture
        two_sides = labels.max() > 1
        colours = {1: (0, 220, 0), 2: (255, 140, 0)} if two_sides else {1: (255, 230, 0)}
        for value, colour in colours.items():
            region = (labels == value) if two_sides else (labels > 0)
            # the pixels of the region within ``thickness`` of its outside (the image's edge counts as outside)
            edge = region & ~erode(region, thickness)
            contour = Image.fromarray(edge)  # a 1-bit mask: Pillow pastes through it 3-4 times faster than an 8-bit one
            picture.paste(colour, corner + (corner[0] + contour.width, corner[1] + contour.height), contour)
    return atomic_write(path, lambda tmp: _save_image(picture, tmp, format="JPEG", quality=quality, subsampling=2))


# written out rather than looked up in pydicom's code dictionary: pydicom 2.4's (MONAI Label's environment) has two
# codes under this name
_ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
# save_as's switch for a DICOM file (preamble, file meta) is named differently in pydicom 2 (MONAI Label's environment)
_AS_DICOM_FILE = (
    {"enforce_file_format": True} if int(pydicom.__version__.split(".")[0]) >= 3 else {"write_like_original": False}
)
_REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# spacing is given to the SEG explicitly (validated, corrected for magnification): highdicom must not copy the source's
_SPACING = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def seg_source(header: Dataset) -> Dataset:
    """The source image's header as a DICOM SEG references it: a copy of ``header`` (valid values only, see
    :func:`scripts.io.dicom.clean_header`) without its spacing, with the Type 2 patient and study attributes present
    (empty when absent, as in anonymised exports).

    Raises:
        ValueError: a UID the SEG must reference is missing or not a valid UID.
    """
    clean = clean_header(header)
    for keyword in _SPACING:
        if keyword in clean:
            del clean[keyword]
    missing = [k for k in _REFERENCE_UIDS if not clean.get(k)]
    if missing:
        raise ValueError(f"the source DICOM has no valid {', '.join(missing)}, so a SEG cannot reference it")
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in clean:
            setattr(clean, keyword, None)
    return clean


# the plane that viewers built on cornerstone3D (OHIF) give a projection radiograph, which has no patient coordinates
_NOMINAL_ORIENTATION = [1, 0, 0, 0, 1, 0]  # rows along +x, columns along +y
_NOMINAL_POSITION = [0, 0, 0]  # the first pixel at the origin


def with_image_plane(source: Dataset, pixel_spacing: tuple[float, float] | None) -> Dataset:
    """``source`` (a copy of the header, as :func:`seg_source` gives) with the plane a SEG of it is placed on.

    A projection radiograph (DX, CR) has no Frame of Reference and no patient position or orientation, and a SEG of it
    made from its header alone has none either: valid DICOM, which OHIF and other cornerstone3D viewers nevertheless
    refuse to display (they read the SEG's Plane Orientation). A radiograph that has them keeps its own. One that has
    none gets the plane those viewers assume for it: a Frame of Reference of its own (its UID derived from the image's
    SOP Instance UID, so every SEG of the image shares it), rows along x and columns along y from the origin, and its
    pixel spacing (1 mm where unknown, as the viewers take it). PS3.3 allows a SEG these (A.51: the Frame of Reference
    and plane groups "may be present" when Derivation Image, which the SEG also has, is); they describe the image grid
    for display, not the patient. Slice Thickness, which a plane's pixel measures need, is 1 mm.
    """
    from pydicom.uid import generate_uid

    has_plane = all(source.get(k) for k in ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient"))
    if not has_plane:
        source.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "image plane"])
        source.PositionReferenceIndicator = ""
        source.ImageOrientationPatient = _NOMINAL_ORIENTATION
        source.ImagePositionPatient = _NOMINAL_POSITION
    source.PixelSpacing = [float(v) for v in (pixel_spacing or (1.0, 1.0))]
    if not source.get("SliceThickness"):
        source.SliceThickness = 1.0
    return source


def seg_sop_uid(source_sop_instance_uid: str, uid_seed: str = "") -> str:
    """The SOP Instance UID of the SEG :func:`write_dicom_seg` writes for a source image and a run's settings: known
    before the SEG exists, so a PACS can be asked whether it has it already."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(source_sop_instance_uid), "lung-seg", str(uid_seed)])


def write_dicom_seg(
    path: str,
    source,
    mask: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    label_sides: bool = False,
    uid_seed: str = "",
    series_number: int = 900,
    software_version: str = "unknown",
    algorithm_name: str = "VGG16 FCN lung segmentation",
    algorithm_type: str = "AUTOMATIC",
    series_description: str = "Lung segmentation (research use only)",
) -> tuple[str, str]:
    """Write a binary DICOM Segmentation of ``source`` with highdicom; return ``(path, SOP Instance UID)``.

    The SEG references the source's study, series and instance (highdicom copies the patient and study, and lists
    the source in the Referenced Series and Derivation Image sequences). Its UIDs are derived from the source's UIDs
    and ``uid_seed`` (the run's settings), so re-running the same model on the same image gives the same UIDs and a
    changed model gives new ones.

    Args:
        path: where to write.
        source: the source image's pydicom ``Dataset`` (pixel data not needed).
        mask: ``(rows, columns)`` labels: non-zero is lung; with ``label_sides``, 1 is right and 2 is left lung.
        pixel_spacing: ``(row, column)`` mm, written as Pixel Measures; ``None`` when unknown.
        label_sides: two segments (right lung, left lung) instead of one (lung).
        uid_seed: text mixed into the generated UIDs.
        series_number: Series Number of the SEG.
        software_version: written in Software Versions and the algorithm identification.
        algorithm_name: the algorithm's name in the segment descriptions.
        algorithm_type: the segments' Segment Algorithm Type: ``"AUTOMATIC"`` (the model's mask) or
            ``"SEMIAUTOMATIC"`` (the model's mask corrected by a person, as MONAI Label saves it).
        series_description: the SEG's Series Description (readers such as MONAI Label's datastore select SEGs by it).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    source = with_image_plane(seg_source(source), pixel_spacing)
    mask = np.asarray(mask)
    if label_sides:
        names, pixels = ("right", "left"), np.where(np.isin(mask, (1, 2)), mask, 0).astype(np.uint8)
    else:
        names, pixels = ("lung",), (mask > 0).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=software_version, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=_SEGMENTS[name][1],
            segmented_property_category=_ANATOMICAL_STRUCTURE,
            segmented_property_type=Code(_SEGMENTS[name][0], "SCT", _SEGMENTS[name][1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(names, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(entropy_srcs=[str(source.SeriesInstanceUID), "lung-seg", uid_seed]),
            series_number=series_number,
            sop_instance_uid=seg_sop_uid(str(source.SOPInstanceUID), uid_seed),
            instance_number=max(1, int(source.get("InstanceNumber") or 1)),  # a valid IS after seg_source
            manufacturer="MONAI bundle",
            manufacturer_model_name=algorithm_name,
            software_versions=software_version,
            device_serial_number="none",
            content_label="LUNGS",
            content_description=f"Lung fields, {algorithm_type.lower()} (research use only)",
            series_description=series_description,
            omit_empty_frames=False,
        )
    except KeyError as exc:  # highdicom looks the source's IOD up by its SOP class
        raise ValueError(
            f"the source's SOP Class UID {source.SOPClassUID} is not a standard storage class, so a SEG cannot "
            "reference it"
        ) from exc
    # General Image module: Patient Orientation is Type 2C (required without plane orientation, as here): the
    # source's rows and columns directions, empty when it has none
    orientation = [str(v) for v in pydicom.multival.MultiValue(str, source.get("PatientOrientation") or [])]
    seg.PatientOrientation = (
        orientation if len(orientation) == 2 and all(map(_ORIENTATION.fullmatch, orientation)) else ""
    )
    atomic_write(path, lambda tmp: seg.save_as(tmp, **_AS_DICOM_FILE))
    return path, str(seg.SOPInstanceUID)
