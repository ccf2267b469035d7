"""All masks of a run in one file: run-length-encoded masks in a gzipped CSV, in the form of the CheXmask release.

An archive of 100,000 radiographs segmented one PNG per image leaves 100,000 files; with ``--write_rle true``
(and ``--write_png false`` if the PNGs are not wanted) batch inference writes ``masks_rle.csv.gz`` instead: one row
per segmented image with its relative path, shape, areas and masks. This module encodes the masks, writes the file
from the run's records and reads it back.

Encoding (CheXmask's): the mask's pixels are numbered 1, 2, ... in row-major order (along each row, then down the
rows, as the image is stored); the text is ``"start length start length ..."`` for each run of lung pixels. An empty
mask is the empty text. Columns (:data:`ARCHIVE_COLUMNS`): ``input`` (path relative to the input folder, as in the
report), ``height`` and ``width`` (the image's rows and columns), ``lung_area_px``, ``right_lung_area_px``,
``left_lung_area_px``, ``lungs`` (every lung pixel: the mask PNG), and ``right_lung`` and ``left_lung`` (the sides,
when the run labels them with ``--label_sides true``; empty otherwise).
"""

from __future__ import annotations

import csv
import gzip
import os
import sys
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image

from ..io.files import atomic_write

__all__ = [
    "ARCHIVE_COLUMNS",
    "ARCHIVE_NAME",
    "decode_mask",
    "encode_mask",
    "mask_runs",
    "read_mask_archive",
    "write_mask_archive",
    "write_masks_as_png",
]

ARCHIVE_NAME = "masks_rle.csv.gz"
ARCHIVE_COLUMNS = (
    "input",
    "height",
    "width",
    "lung_area_px",
    "right_lung_area_px",
    "left_lung_area_px",
    "lungs",
    "right_lung",
    "left_lung",
)


def encode_mask(mask: np.ndarray) -> str:
    """The run-length text of a 2D ``(rows, columns)`` mask's non-zero pixels (1-based, row-major)."""
    flat = np.asarray(mask).ravel() != 0
    edges = np.flatnonzero(np.diff(flat.view(np.int8), prepend=0, append=0))
    starts, ends = edges[0::2], edges[1::2]
    runs = np.empty(2 * len(starts), np.int64)
    runs[0::2], runs[1::2] = starts + 1, ends - starts
    return " ".join(map(str, runs.tolist()))


def decode_mask(text: str, height: int, width: int) -> np.ndarray:
    """The ``(height, width)`` boolean mask of a run-length text (:func:`encode_mask`'s inverse).

    Raises:
        ValueError: the text is not pairs of positive integers, or a run lies outside the image.
    """
    runs = np.array(text.split(), np.int64)
    if len(runs) % 2 or (len(runs) and (runs.min() < 1 or (runs[0::2] - 1 + runs[1::2]).max() > height * width)):
        raise ValueError(f"not a run-length mask of a {height}x{width} image: {text[:60]!r}")
    flat = np.zeros(height * width + 1, np.int8)
    np.add.at(flat, runs[0::2] - 1, 1)
    np.add.at(flat, runs[0::2] - 1 + runs[1::2], -1)
    return np.cumsum(flat[:-1]).reshape(height, width) > 0


def mask_runs(mask: np.ndarray, label_sides: bool) -> dict:
    """The archive's mask columns of one ``(rows, columns)`` mask: ``lungs``, and ``right_lung``/``left_lung`` when
    its values are side labels (1 right, 2 left)."""
    mask = np.asarray(mask)
    return {
        "lungs": encode_mask(mask),
        "right_lung": encode_mask(mask == 1) if label_sides else "",
        "left_lung": encode_mask(mask == 2) if label_sides else "",
    }


def write_mask_archive(path: str, rows: Iterable[dict]) -> str:
    """Write the archive (gzipped CSV, atomically) from rows holding :data:`ARCHIVE_COLUMNS`; returns ``path``."""

    def write(tmp: str) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8", newline="", compresslevel=6) as f:
            writer = csv.DictWriter(f, fieldnames=ARCHIVE_COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: "" if row.get(c) is None else row[c] for c in ARCHIVE_COLUMNS})

    return atomic_write(path, write)


def read_mask_archive(path: str, decode: bool = True) -> Iterator[dict]:
    """The rows of an archive, one per image: ``input`` and the sizes and areas as ints; with ``decode``, the
    ``lungs``, ``right_lung`` and ``left_lung`` columns as boolean ``(height, width)`` arrays (a side is ``None``
    where the run did not label sides, or that side is empty), else as their run-length texts."""
    csv.field_size_limit(sys.maxsize)  # a mask of a large image is one long field
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            for column in ARCHIVE_COLUMNS[1:6]:
                row[column] = int(row[column]) if row[column] else None
            if decode:
                for column in ARCHIVE_COLUMNS[6:]:
                    if column == "lungs" or row[column]:
                        row[column] = decode_mask(row[column], row["height"], row["width"])
                    else:
                        row[column] = None
            yield row


def write_masks_as_png(path: str, folder: str) -> list[str]:
    """Decode an archive into one 8-bit mask PNG per image (255 lung, 0 elsewhere, as batch inference writes them)
    under ``folder``, at the input's relative path with ``_mask.png`` for its extension; returns the paths."""
    written = []
    for row in read_mask_archive(path):
        stem = os.path.splitext(row["input"])[0]
        target = os.path.join(folder, stem + "_mask.png")
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        Image.fromarray(row["lungs"].view(np.uint8) * np.uint8(255), mode="L").save(target)
        written.append(target)
    return written
