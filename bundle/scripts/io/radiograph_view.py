"""What a DICOM header says a radiograph shows: a frontal chest, another body part, or a lateral (or oblique) view.

A PACS's CR and DX series hold hands, knees, spines and lateral chests beside the frontal chests this bundle
segments. :func:`header_view` reads the header's evidence, in order of trust:

* the body part: Body Part Examined (0018,0015), then the Anatomic Region Sequence (0008,2218), then the series and
  the study descriptions, and last Image Laterality (0020,0062): L or R names one side of a paired body part (a
  hand, a knee, a breast), where a chest is U, B or nothing;
* the view: View Position (0018,5101), then the View Code Sequence (0054,0220), then Patient Orientation
  (0020,0020: a lateral view has A or P along one of the image's axes), then the series description.

Free text is matched by whole words (``HAND``, ``LAT``; ``THORAX``, ``CHEST``, in some languages), so ``ABDOMINAL``
does not read as ``ABDOMEN`` and a study called "CHEST PA AND LATERAL" says nothing about which view this image is
(the study description is read for the body part only). A body part the header names but this module does not know
is no evidence either way; so is an empty header. The image evidence, which every input gets, is in
:mod:`scripts.lung_shape`.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

__all__ = [
    "header_view",
    "taken_as",
    "LATERAL_VIEWS",
    "FRONTAL",
    "NOT_CHEST",
    "NON_FRONTAL",
    "UNKNOWN",
    "NOT_A_FRONTAL_CHEST",
]

FRONTAL, NOT_CHEST, NON_FRONTAL, UNKNOWN = "frontal chest", "not a chest", "not a frontal view", "unknown"
# how a skipped input's reason starts when the check skipped it, whichever evidence it went by
NOT_A_FRONTAL_CHEST = "not a frontal chest radiograph"

_CHEST_WORDS = {"CHEST", "THORAX", "THORACIC", "THORAXES", "LUNG", "LUNGS", "TORAX", "TORACE", "THORAKS", "BRUST",
                "POUMON", "POUMONS", "PULMON", "PULMONES", "CXR", "RIBS", "RIB", "STERNUM"}  # fmt: skip
# Body Part Examined's defined terms (PS3.16 CID 4031) and common free text for projection radiographs of anything
# but the chest
_OTHER_PARTS = {
    "ABDOMEN", "ANKLE", "ARM", "BREAST", "CALCANEUS", "CERVICAL", "CLAVICLE", "COCCYX", "CSPINE", "DENTAL", "ELBOW",
    "EXTREMITY", "FACE", "FEMUR", "FIBULA", "FINGER", "FINGERS", "FOOT", "FOREARM", "HAND", "HANDS", "HEAD", "HEEL",
    "HIP", "HIPS", "HUMERUS", "JAW", "KNEE", "KNEES", "LEG", "LSPINE", "LUMBAR", "MAMMO", "MAMMOGRAPHY", "MANDIBLE",
    "NECK", "NOSE", "ORBIT", "PANORAMIC", "PANO", "PATELLA", "PELVIS", "SACRUM", "SCAPULA", "SHOULDER", "SINUS",
    "SINUSES", "SKULL", "SPINE", "SSPINE", "TEETH", "THUMB", "TIBIA", "TMJ", "TOE", "TOES", "TSPINE", "WRIST",
    "ZYGOMA",
}  # fmt: skip
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LATERALE", "SEITLICH"}
_OBLIQUE_VIEWS = {"RAO", "LAO", "RPO", "LPO", "OBL", "OBLIQUE"}
_FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE", "PA ERECT", "AP ERECT", "FRONTAL"}


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # a value pydicom cannot convert is no evidence
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return "".join(c if c.isprintable() else " " for c in str(value or ""))[:64].strip()


def _words(text: str) -> set[str]:
    return set(re.split(r"[^A-Z0-9]+", text.upper())) - {""}


def _code_meanings(ds: Dataset, keyword: str) -> str:
    try:
        return " ".join(str(item.get("CodeMeaning", "")) for item in (ds.get(keyword) or []))[:64]
    except Exception:
        return ""


def _body_part(ds: Dataset) -> tuple[str, str]:
    """``(FRONTAL or NOT_CHEST or UNKNOWN, evidence)`` for the body part (FRONTAL meaning "a chest" here)."""
    sources = (
        ("Body Part Examined", _text(ds, "BodyPartExamined")),
        ("Anatomic Region", _code_meanings(ds, "AnatomicRegionSequence")),
        ("Series Description", _text(ds, "SeriesDescription")),
        ("Study Description", _text(ds, "StudyDescription")),
    )
    for name, text in sources:
        words = _words(text)
        if words & _CHEST_WORDS:
            return FRONTAL, f"{name} {text}"
        if words & _OTHER_PARTS:
            return NOT_CHEST, f"{name} {text}"
    laterality = _text(ds, "ImageLaterality").upper()
    if laterality in ("L", "R"):
        return NOT_CHEST, f"Image Laterality {laterality} (one side of a paired body part)"
    return UNKNOWN, ""


def _view(ds: Dataset) -> tuple[str, str]:
    """``(FRONTAL or NON_FRONTAL or UNKNOWN, evidence)`` for the view."""
    position = _text(ds, "ViewPosition").upper()
    if position in LATERAL_VIEWS | _OBLIQUE_VIEWS:
        kind = "lateral" if position in LATERAL_VIEWS else "oblique"
        return NON_FRONTAL, f"View Position {position} ({kind})"
    if position in _FRONTAL_VIEWS:
        return FRONTAL, f"View Position {position}"
    meanings = _code_meanings(ds, "ViewCodeSequence")
    lowered = meanings.lower()
    if "lateral" in lowered or "oblique" in lowered:
        return NON_FRONTAL, f"View Code {meanings}"
    if "postero-anterior" in lowered or "antero-posterior" in lowered or "frontal" in lowered:
        return FRONTAL, f"View Code {meanings}"
    orientation = _text(ds, "PatientOrientation").upper()
    directions = [part[:1] for part in orientation.split("\\")]
    if len(directions) == 2 and {"A", "P"} & set(directions) and set(directions) <= set("LRAPHF"):
        return NON_FRONTAL, f"Patient Orientation {orientation} (lateral)"
    series = _text(ds, "SeriesDescription")
    if _words(series) & (LATERAL_VIEWS | _OBLIQUE_VIEWS):
        return NON_FRONTAL, f"Series Description {series}"
    return UNKNOWN, ""


def header_view(ds: Dataset) -> tuple[str, str]:
    """What the header says the image shows: ``(verdict, evidence)``.

    ``verdict`` is :data:`FRONTAL` (a chest, frontal or of unknown view: the image evidence decides),
    :data:`NOT_CHEST` (another body part), :data:`NON_FRONTAL` (a lateral or oblique view) or :data:`UNKNOWN` (the
    header says nothing either way); ``evidence`` names the fields and their values, e.g. ``"Body Part Examined
    HAND"`` or ``"Body Part Examined CHEST, View Position PA"`` (empty when there is none).
    """
    part, part_evidence = _body_part(ds)
    if part == NOT_CHEST:
        return NOT_CHEST, part_evidence
    view, view_evidence = _view(ds)
    evidence = ", ".join(dict.fromkeys(e for e in (part_evidence, view_evidence) if e))  # once, when both read one
    if view == NON_FRONTAL:
        return NON_FRONTAL, evidence
    return (FRONTAL, evidence) if FRONTAL in (part, view) else (UNKNOWN, evidence)


def taken_as(decision: str, header: str = "", image: str = "") -> str:
    """The report's ``taken_as``: what an input was taken for and from which evidence, e.g. ``"frontal chest
    (header: Body Part Examined CHEST, View Position PA; image: lung shape 1.63)"``."""
    evidence = "; ".join(f"{name}: {text}" for name, text in (("header", header), ("image", image)) if text)
    return f"{decision} ({evidence})" if evidence else decision
