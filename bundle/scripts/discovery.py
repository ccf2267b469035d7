"""Find the inputs of a batch-inference run and decide, per file, whether it is a radiograph to segment.

A folder is searched recursively (sorted, hidden files and folders starting with ``.`` ignored, the run's own output
folder excluded). A datalist JSON file can replace the folder: MONAI's decathlon format, ``{"testing": [{"image":
path}, ...]}`` (or ``"test"``; items may also be plain paths), paths relative to the JSON file.

Every discovered file gets one entry with a ``status``:

* ``pending``: a radiograph to segment (single-frame DICOM image of a radiographic modality, PNG, JPEG, BMP, TIFF, 2D
  NIfTI);
* ``skipped`` with the reason: DICOMDIR, DICOM objects that are not images (structured reports, key-object
  selections, presentation states, encapsulated PDF/CDA, segmentations, RT objects, waveforms, raw data, ...),
  multi-frame DICOM (see below), DICOM images of non-radiographic modalities (CT, MR, US, ...), 3D NIfTI volumes,
  and documents that are obviously not images (``.txt``, ``.csv``, ``.pdf``, ...);
* ``failed`` with the reason: empty files, unreadable DICOM headers, files that are neither DICOM nor a known image
  format.

Classifying a file never raises: whatever a header holds (an unknown value representation, text where a number
belongs, a length past the end of the file, a deflate bomb), the file gets its ``failed`` entry with the reason, and
the run goes on. Named pipes, devices and sockets in the folder are ``skipped`` (they are not files to read: reading
a pipe or ``/dev/zero`` would never end).

Multi-frame DICOM (``NumberOfFrames > 1``) is skipped with its reason: a chest radiograph is a single frame, and the
multi-frame objects found next to them (tomosynthesis, fluoroscopy cine, dual-energy stacks) are not PA radiographs
the network was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable

from pydicom.uid import UID, MediaStorageDirectoryStorage

from .dicom import MAX_IMAGE_PIXELS, number_of_frames, read_dicom, safe_get
from .input_errors import describe_error, is_input_failure
from .radiograph_reader import sniff_format

__all__ = ["discover_inputs", "classify_file", "RADIOGRAPH_MODALITIES"]

logger = logging.getLogger(__name__)

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
_DOCUMENT_EXTENSIONS = (
    ".txt",
    ".csv",
    ".json",
    ".xml",
    ".md",
    ".html",
    ".htm",
    ".pdf",
    ".log",
    ".ini",
    ".cfg",
    ".yaml",
    ".yml",
    ".doc",
    ".docx",
    ".xls",
    ".xlsx",
    ".rtf",
    ".sh",
    ".bat",
    ".py",
    ".zip",
)
_DATALIST_KEYS = ("testing", "test")


def _entry(path: str, display: str, kind: str, status: str, reason: str = "") -> dict:
    try:
        stat = os.stat(path)
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime_ns = -1, -1
    return {
        "path": path,
        "input": display,
        "key": hashlib.sha1(display.encode("utf-8", "surrogateescape")).hexdigest()[:16],
        "kind": kind,
        "status": status,
        "reason": reason,
        "size": size,
        "mtime_ns": mtime_ns,
    }


def _classify_dicom(path: str, modalities: Iterable[str], max_pixels: int) -> tuple[str, str]:
    if os.path.basename(path).upper() == "DICOMDIR":
        return "skipped", "DICOMDIR (media directory index), not an image"
    # large elements (private blobs, icons) are not loaded: only the attributes below are read
    ds = read_dicom(path, max_pixels, stop_before_pixels=True, defer_size=1 << 20)
    meta = getattr(ds, "file_meta", None)
    sop = str(safe_get(ds, "SOPClassUID") or (safe_get(meta, "MediaStorageSOPClassUID") if meta else "") or "")[:64]
    name = UID(sop).name if UID(sop).is_valid else f"invalid SOP Class UID {sop[:40]!r}" if sop else "no SOP Class UID"
    if sop == MediaStorageDirectoryStorage:
        return "skipped", "DICOMDIR (media directory index), not an image"
    for prefix, what in _NON_IMAGE_SOP_CLASSES:
        if sop.startswith(prefix):
            return "skipped", f"{what} ({name}), not an image"
    if "Rows" not in ds or "Columns" not in ds:
        if "Image Storage" in name or not UID(sop).is_valid:  # an image object without its image: corrupt
            return "failed", f"no Rows and Columns in this DICOM object ({name}): a truncated or corrupt header"
        return "skipped", f"no image in this DICOM object ({name})"
    frames, _ = number_of_frames(ds)
    if frames > 1:
        return "skipped", f"multi-frame image ({frames} frames, {name}); only single-frame radiographs are segmented"
    modality = str(safe_get(ds, "Modality", "") or "").strip().upper()
    if modality not in modalities:
        allowed = ", ".join(m for m in modalities if m)
        shown = "".join(c if c.isprintable() else "?" for c in modality[:16])
        return "skipped", f"modality {shown} is not a projection radiograph ({allowed} are segmented)"
    return "pending", ""


def _classify_nifti(path: str) -> tuple[str, str]:
    import nibabel

    try:
        shape = tuple(nibabel.load(path).shape)
    except Exception as exc:
        return "failed", f"unreadable NIfTI header ({type(exc).__name__}: {exc})"
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return "pending", ""
    return "skipped", f"{len(shape)}D NIfTI of shape {shape}, not a 2D radiograph"


def classify_file(
    path: str,
    display: str | None = None,
    modalities: Iterable[str] = RADIOGRAPH_MODALITIES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> dict:
    """Classify one file (see the module docstring); never raises.

    Args:
        path: the file.
        display: how the report names it (default: ``path``).
        modalities: DICOM Modality values that are segmented; other images are skipped.
        max_pixels: the image size limit of the run (a deflated DICOM dataset may expand to about 4 bytes a pixel).

    Returns:
        ``{"path", "input", "key", "kind", "status", "reason", "size", "mtime_ns"}``; ``key`` identifies the input in
        the output folder (a hash of ``display``).
    """
    display = display or path
    try:
        return _classify(path, display, tuple(modalities), max_pixels)
    except BaseException as exc:  # whatever a file holds, it gets its row
        if not is_input_failure(exc):
            raise
        return _entry(path, display, "unknown", "failed", f"reading the header: {describe_error(exc, path)}")


_SPECIAL_FILES = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"))


def _classify(path: str, display: str, modalities: tuple[str, ...], max_pixels: int) -> dict:
    if not os.path.lexists(path):
        return _entry(path, display, "missing", "failed", "file not found")
    if not os.path.exists(path):
        return _entry(path, display, "missing", "failed", "broken symbolic link (its target does not exist)")
    if os.path.isdir(path):
        return _entry(path, display, "folder", "failed", "is a folder, not a file")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _SPECIAL_FILES if test(mode)), "special file")
        return _entry(path, display, "other", "skipped", f"not a regular file ({what})")
    if os.path.getsize(path) == 0:
        return _entry(path, display, "empty", "failed", "empty file (0 bytes)")
    kind = sniff_format(path)
    if kind == "dicom":
        status, reason = _classify_dicom(path, modalities, max_pixels)
    elif kind == "nifti":
        status, reason = _classify_nifti(path)
    elif kind is not None:
        status, reason = "pending", ""
    elif path.lower().endswith(_DOCUMENT_EXTENSIONS):
        kind, status, reason = "other", "skipped", f"not an image ({os.path.splitext(path)[1].lower()} file)"
    else:
        kind, status = "unknown", "failed"
        reason = "unrecognised file: not DICOM (no 'DICM' marker at byte 128), PNG, JPEG, BMP, TIFF or NIfTI"
    return _entry(path, display, kind, status, reason)


def _walk(root: str, exclude: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str, OSError]]]:
    """``(files, unreadable folders)`` under ``root``: files as ``(path, path relative to root)``."""
    found, unreadable = [], []

    def note(error: OSError) -> None:  # os.walk skips a folder it cannot list: keep it, so it gets a report row
        unreadable.append((error.filename, os.path.relpath(error.filename, root), error))

    for folder, dirs, files in os.walk(root, onerror=note):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in exclude
        )
        for name in sorted(files):
            if not name.startswith("."):
                path = os.path.join(folder, name)
                found.append((path, os.path.relpath(path, root)))
    return found, unreadable


def _datalist_files(datalist_file: str, key: str | None) -> list[tuple[str, str]]:
    with open(datalist_file) as f:
        content = json.load(f)
    if isinstance(content, dict):
        keys = [key] if key else [k for k in _DATALIST_KEYS if k in content]
        if not keys or keys[0] not in content:
            raise ValueError(
                f"{datalist_file}: no {' or '.join(repr(k) for k in ([key] if key else _DATALIST_KEYS))} "
                f"list of images (keys found: {sorted(content)})"
            )
        items = content[keys[0]]
    else:
        items = content
    base = os.path.dirname(os.path.abspath(datalist_file))
    found = []
    for item in items:
        name = item.get("image") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise ValueError(f"{datalist_file}: each item must be a path or {{'image': path}}, got {item!r}")
        path = os.path.normpath(os.path.join(base, os.path.expanduser(name)))
        found.append((path, os.path.relpath(path, base) if not os.path.isabs(name) else path))
    return found


def discover_inputs(
    dataset_dir: str,
    exclude: Iterable[str] = (),
    modalities: Iterable[str] = RADIOGRAPH_MODALITIES,
    datalist_key: str | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[dict]:
    """Find and classify every input of a run.

    Args:
        dataset_dir: a folder (searched recursively) or a datalist JSON file.
        exclude: folders not to search (the output folder, when it lies inside ``dataset_dir``).
        modalities: DICOM Modality values that are segmented.
        datalist_key: the list to use in a datalist JSON file (default ``"testing"``, else ``"test"``).
        max_pixels: the image size limit of the run (see :func:`classify_file`).

    Returns:
        One :func:`classify_file` entry per discovered file, in a stable order; ``input`` is the path relative to the
        folder (or to the datalist file).

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing, or holds no file at all.
    """
    if not dataset_dir:
        raise FileNotFoundError("no input given: pass --dataset_dir FOLDER (or a datalist JSON file)")
    root = os.path.abspath(os.path.expanduser(str(dataset_dir)))
    unreadable: list[tuple[str, str, OSError]] = []
    if os.path.isfile(root) and root.lower().endswith(".json"):
        files = _datalist_files(root, datalist_key)
    elif os.path.isdir(root):
        files, unreadable = _walk(root, [os.path.realpath(e) for e in exclude])
    elif os.path.isfile(root):
        files = [(root, os.path.basename(root))]
    else:
        raise FileNotFoundError(f"dataset_dir does not exist: {root}")
    if not files and not unreadable:
        raise FileNotFoundError(f"{root}: no files found (hidden files and the output folder are not searched)")
    modalities = tuple(m.upper() for m in modalities)
    entries = [classify_file(path, display, modalities, max_pixels) for path, display in files]
    entries += [
        _entry(path, display, "folder", "failed", f"folder cannot be listed ({error.strerror or error})")
        for path, display, error in unreadable
    ]
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):  # the same file listed twice in a datalist is one input
        if entry["key"] in seen:
            entry.update(
                status="skipped", reason=f"listed twice (same as {seen[entry['key']]})", key=f"{entry['key']}-{index}"
            )
        else:
            seen[entry["key"]] = entry["input"]
    counts = {s: sum(e["status"] == s for e in entries) for s in ("pending", "skipped", "failed")}
    logger.info(
        "%s: %d files found, %d to segment, %d skipped, %d failed",
        root,
        len(entries),
        counts["pending"],
        counts["skipped"],
        counts["failed"],
    )
    return entries
