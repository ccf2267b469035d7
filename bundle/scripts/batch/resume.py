"""The resume decision of a batch run: which finished inputs of an earlier run into the same output folder are kept
instead of segmented again.

A stored record is reused when its status was ``ok``, the input file has the same size and modification time, the
run's fingerprint (:mod:`scripts.batch.fingerprint`) is the same, and its output files still exist; ``overwrite``
(``--overwrite true``) reuses nothing. Failed inputs are always retried.
"""

from __future__ import annotations

import os

__all__ = ["OUTPUT_COLUMNS", "reusable"]

# the report columns that name an output file, relative to the output folder
OUTPUT_COLUMNS = ("mask_png", "mask_nifti", "seg_dicom", "overlay")


def reusable(entry: dict, stored: dict | None, settings_id: str, output_dir: str) -> bool:
    """Whether ``stored`` (the input's last record, or ``None``) can stand for the discovered input ``entry``."""
    source = (stored or {}).get("_source", {})
    return not (
        stored is None
        or stored.get("status") != "ok"
        or stored.get("_settings") != settings_id
        or source.get("size") != entry["size"]
        or source.get("mtime_ns") != entry["mtime_ns"]
        or any(stored.get(c) and not os.path.isfile(os.path.join(output_dir, stored[c])) for c in OUTPUT_COLUMNS)
    )
