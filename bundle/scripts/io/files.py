"""Files on disk: which formats the bundle reads (one list of extensions, recognition by content) and the one way it
writes a file (atomically, so that no reader and no resumed run ever sees half of one)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from monai.config import PathLike

__all__ = [
    "IMAGE_EXTENSIONS",
    "PIL_FORMATS",
    "TEMPORARY_PREFIX",
    "atomic_write",
    "image_stem",
    "is_dicom_file",
    "is_part10_file",
    "is_raw_dataset",
    "remove_temporary_files",
    "sniff_format",
]

# every extension an input image or mask may have (longest first, so ".nii.gz" wins over ".gz")
IMAGE_EXTENSIONS = (".nii.gz", ".dicom", ".jpeg", ".tiff", ".png", ".jpg", ".bmp", ".tif", ".dcm", ".nii")
PIL_FORMATS = ("png", "jpeg", "bmp", "tiff")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# the name a file has while it is written (see atomic_write); what a killed process leaves behind starts with it
TEMPORARY_PREFIX = ".tmp-"
_UMASK = os.umask(0)  # read once (setting is the only way to read it) and put back at once
os.umask(_UMASK)


def image_stem(name: str) -> str:
    """``name`` without its image extension (``a.nii.gz`` -> ``a``, ``a.PNG`` -> ``a``); other names unchanged
    (``IM0001``, a DICOM file without extension, stays ``IM0001``)."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


# the value representations of DICOM (PS3.5 6.2): an explicit-VR element has one of them after its tag
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def is_raw_dataset(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a DICOM dataset written without the Part 10 preamble and
    file meta information, as older modalities and some archives store them: a group 0008 element (the first group
    of every image object's dataset) in little endian, explicit VR (a known VR after the tag) or implicit VR (a
    short length after it)."""
    if len(head) < 8 or head[0:2] != b"\x08\x00" or int.from_bytes(head[2:4], "little") > 0x00FF:
        return False
    if head[4:6] in _VRS:
        return True
    return int.from_bytes(head[4:8], "little") <= 1024


def _head(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


def _is_part10(head: bytes) -> bool:
    return len(head) == 132 and head[128:132] == b"DICM"


def is_part10_file(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file: the ``DICM`` marker after the 128-byte preamble."""
    return _is_part10(_head(path))


def is_dicom_file(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file, judged by content: a Part 10 file (:func:`is_part10_file`), or a dataset
    without preamble and file meta information (:func:`is_raw_dataset`)."""
    head = _head(path)
    return _is_part10(head) or is_raw_dataset(head)


def sniff_format(path: PathLike) -> str | None:
    """Return ``"dicom"``, ``"png"``, ``"jpeg"``, ``"bmp"``, ``"tiff"`` or ``"nifti"`` for ``path``, else ``None``.

    DICOM is recognised by content (:func:`is_dicom_file`: the ``DICM`` marker at byte 128, or a dataset without
    preamble), whatever the file's name; images by their magic numbers; NIfTI by its ``.nii``/``.nii.gz`` extension.
    Any other ``.dcm``/``.dicom`` file counts as DICOM, so that reading it says what is wrong with it. Unreadable or
    empty files give ``None``.
    """
    path = os.fspath(path)
    if is_dicom_file(path):
        return "dicom"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if not head:
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    if lower.endswith((".dcm", ".dicom")):
        return "dicom"
    return None


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(temporary_path)`` and move the result to ``path`` in one step; returns ``path``.

    The temporary file (``.tmp-*`` in the same folder, so the rename is atomic) is removed on error; the file it
    replaces, if any, stays complete until the rename.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    suffix = ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600): give it the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_temporary_files(folder: str, recursive: bool = True) -> None:
    """Delete the temporary files a killed writer left in ``folder`` (only one run may write a folder at a time)."""
    for root, _, files in os.walk(folder) if recursive else [(folder, None, os.listdir(folder))]:
        for name in files:
            if name.startswith(TEMPORARY_PREFIX):
                try:
                    os.remove(os.path.join(root, name))
                except OSError:  # already gone, or not ours to delete
                    pass
