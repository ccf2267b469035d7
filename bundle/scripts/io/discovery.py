"""Find the inputs of a batch-inference run and tell, from each file's name and first bytes, what it is.

A folder is searched recursively (sorted, hidden files and folders starting with ``.`` ignored, the run's own output
folder excluded). A datalist JSON file can replace the folder: MONAI's decathlon format, ``{"testing": [{"image":
path}, ...]}`` (or ``"test"``; items may also be plain paths), paths relative to the JSON file.

Every discovered file gets one entry with a ``status``:

* ``pending``: an image to read: DICOM (recognised by content), PNG, JPEG, BMP, TIFF, NIfTI. Whether a DICOM object is
  a radiograph to segment (not a structured report, a multi-frame or a CT image, ...) and whether a NIfTI is 2D is
  decided when the file is read, once, in the data loader's workers (:class:`scripts.io.reader.RadiographReader`):
  a discovery that opened every header of an archive would read each file twice, in one process;
* ``skipped`` with the reason: ``DICOMDIR`` files, documents that are obviously not images (``.txt``, ``.csv``,
  ``.pdf``, ...), named pipes, devices and sockets (reading a pipe or ``/dev/zero`` would never end);
* ``failed`` with the reason: empty files, broken links, folders that cannot be listed, files that are neither DICOM
  nor a known image format.

Discovering a file never raises: whatever it is, it gets its entry, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable

from .errors import describe_error, is_input_failure
from .files import sniff_format

__all__ = ["discover_inputs", "classify_file", "entry_for"]

logger = logging.getLogger(__name__)

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


def entry_for(path: str, display: str, kind: str, status: str, reason: str = "") -> dict:
    """A discovery entry (see :func:`classify_file`) decided without reading the file: ``status`` ``pending``,
    ``skipped`` or ``failed`` for the reason given."""
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


def classify_file(path: str, display: str | None = None) -> dict:
    """Classify one file by its name and first bytes (see the module docstring); never raises.

    Args:
        path: the file.
        display: how the report names it (default: ``path``).

    Returns:
        ``{"path", "input", "key", "kind", "status", "reason", "size", "mtime_ns"}``; ``key`` identifies the input in
        the output folder (a hash of ``display``).
    """
    display = display or path
    try:
        return _classify(path, display)
    except BaseException as exc:  # whatever a file holds, it gets its row
        if not is_input_failure(exc):
            raise
        return entry_for(path, display, "unknown", "failed", f"reading the header: {describe_error(exc, path)}")


_SPECIAL_FILES = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"))


def _classify(path: str, display: str) -> dict:
    if not os.path.lexists(path):
        return entry_for(path, display, "missing", "failed", "file not found")
    if not os.path.exists(path):
        return entry_for(path, display, "missing", "failed", "broken symbolic link (its target does not exist)")
    if os.path.isdir(path):
        return entry_for(path, display, "folder", "failed", "is a folder, not a file")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _SPECIAL_FILES if test(mode)), "special file")
        return entry_for(path, display, "other", "skipped", f"not a regular file ({what})")
    if os.path.getsize(path) == 0:
        return entry_for(path, display, "empty", "failed", "empty file (0 bytes)")
    kind = sniff_format(path)
    if kind == "dicom" and os.path.basename(path).upper() == "DICOMDIR":
        status, reason = "skipped", "DICOMDIR (media directory index), not an image"
    elif kind is not None:
        status, reason = "pending", ""
    elif path.lower().endswith(_DOCUMENT_EXTENSIONS):
        kind, status, reason = "other", "skipped", f"not an image ({os.path.splitext(path)[1].lower()} file)"
    else:
        kind, status = "unknown", "failed"
        reason = "unrecognised file: not DICOM (no 'DICM' marker at byte 128), PNG, JPEG, BMP, TIFF or NIfTI"
    return entry_for(path, display, kind, status, reason)


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


def discover_inputs(dataset_dir: str, exclude: Iterable[str] = (), datalist_key: str | None = None) -> list[dict]:
    """Find and classify every input of a run.

    Args:
        dataset_dir: a folder (searched recursively) or a datalist JSON file.
        exclude: folders not to search (the output folder, when it lies inside ``dataset_dir``).
        datalist_key: the list to use in a datalist JSON file (default ``"testing"``, else ``"test"``).

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
    entries = [classify_file(path, display) for path, display in files]
    entries += [
        entry_for(path, display, "folder", "failed", f"folder cannot be listed ({error.strerror or error})")
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
