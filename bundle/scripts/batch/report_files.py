"""The files of a batch run as a whole: ``report.csv`` and ``report.json`` (written atomically) and the review page
(:mod:`scripts.batch.review_page`), from the run's rows and summary.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os

from ..io.files import atomic_write
from .review_page import PAGE_NAME, ROWS_NAME, write_review_page

__all__ = ["REPORT_FILES", "write_report_files"]

# the files of the run as a whole in the output folder (besides records/ and the mask archive)
REPORT_FILES = ("report.csv", "report.json", PAGE_NAME, ROWS_NAME)


def write_report_files(
    output_dir: str, columns: tuple, rows: list[dict], summary: dict, settings: dict, started: str
) -> None:
    """Write ``report.csv`` (one row per input, ``columns``), ``report.json`` (summary, times, settings, rows) and the
    review page into ``output_dir``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_value(row.get(c)) for c in columns})
    document = {
        "summary": summary,
        "started": started,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "output_dir": output_dir,
        "settings": settings,
        "rows": rows,
    }
    atomic_write(os.path.join(output_dir, "report.csv"), lambda tmp: _write_text(tmp, buffer.getvalue()))
    atomic_write(
        os.path.join(output_dir, "report.json"),
        lambda tmp: _write_text(tmp, json.dumps(document, indent=4, default=str)),
    )
    write_review_page(output_dir, rows, summary, settings)


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", newline="") as f:
        f.write(text)
