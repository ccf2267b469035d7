"""The run report of batch inference: one row per discovered file, resume bookkeeping and the exit status.

:func:`open_run` starts a run from the config before the engine runs: it prepares the output folder, discovers the
inputs (:mod:`scripts.io.discovery`) and returns the :class:`RunReport`, which decides which of them still need
segmenting, receives one row per processed input from :class:`scripts.batch.case_writer.CaseWriter`, and at the end
writes ``report.csv`` and ``report.json`` and returns the exit status. :class:`FileProgressBar` shows the files done
out of the files found.

Resume: each finished input's row is also written, atomically, to ``records/<key>.json`` in the output folder, after
its output files. A later run into the same folder reuses a row (and does not segment the input again) when its
status was ``ok``, the input file has the same size and modification time, the run settings (weights, image size,
post-processing, outputs) are the same, and its output files still exist; ``overwrite=True`` segments everything
again. Failed inputs are always retried. A run killed half-way therefore resumes where it stopped, and the final
report has exactly one row per discovered file.

Exit status (see :data:`EXIT_OK`, :data:`EXIT_INPUTS_FAILED`): 0 when every discovered file is ``ok`` or ``skipped``,
3 when at least one is ``failed`` (the report says which and why). A run that cannot start (no input folder, no
weights, bad arguments) or that a fault of its own stops (an output folder that is not writable, a full disk: see
:class:`scripts.batch.fault_tolerance.RunFault`) ends with status 1 and a message; the rows recorded so far stay in
``records/`` and a re-run continues from them.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import logging
import math
import os
import sys

from ignite.engine import Engine, Events
from tqdm import tqdm

from ..io.discovery import discover_inputs
from ..io.files import atomic_write, remove_temporary_files
from .fault_tolerance import RunFault
from .writers import output_stem

__all__ = ["RunReport", "open_run", "FileProgressBar", "file_signature", "COLUMNS", "EXIT_OK", "EXIT_INPUTS_FAILED"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INPUTS_FAILED = 3

COLUMNS = (
    "input",
    "kind",
    "status",
    "reason",
    "rows",
    "columns",
    "pixel_spacing_mm",
    "spacing_source",
    "lung_area_px",
    "lung_area_cm2",
    "right_lung_area_px",
    "left_lung_area_px",
    "right_lung_area_cm2",
    "left_lung_area_cm2",
    "lung_fraction",
    "components",
    "quality_flags",
    "mask_png",
    "mask_nifti",
    "seg_dicom",
    "overlay_png",
    "sop_instance_uid",
    "seg_sop_instance_uid",
    "pixel_processing",
    "reused",
)
OUTPUT_COLUMNS = ("mask_png", "mask_nifti", "seg_dicom", "overlay_png")


def file_signature(path: str) -> str:
    """``"<absolute path>|<size>|<mtime_ns>"`` of a file (``"<path>|missing"``): changes when the file is replaced."""
    path = os.path.abspath(str(path))
    try:
        stat = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def open_run(
    dataset_dir: str,
    output_dir: str,
    overwrite: bool = False,
    settings: dict | None = None,
    datalist_key: str | None = None,
) -> RunReport:
    """Start a batch-inference run: prepare the output folder (created, writable, the temporary files a killed run
    left removed), discover the inputs, and return the run's :class:`RunReport`.

    Args:
        dataset_dir: input folder (searched recursively) or datalist JSON file.
        output_dir: output folder; also holds ``records/``, ``report.csv`` and ``report.json``.
        overwrite: segment every input again, even those a previous run finished.
        settings: everything that changes the outputs (see :class:`RunReport`).
        datalist_key: list to read from a datalist JSON file (default ``"testing"``, else ``"test"``).

    Raises:
        RunFault: the output folder cannot be created or written.
        ValueError: the output folder is the input folder.
        FileNotFoundError: no input folder, or no file in it.
    """
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    if dataset_dir and os.path.realpath(os.path.expanduser(str(dataset_dir))) == os.path.realpath(output_dir):
        raise ValueError(
            f"output_dir is the input folder ({output_dir}): choose another --output_dir, or a sub-folder of the input "
            "(it is then not searched for inputs)"
        )
    records = os.path.join(output_dir, "records")
    try:
        os.makedirs(records, exist_ok=True)
        if not os.access(records, os.W_OK | os.X_OK):
            raise PermissionError(f"no permission to write in {records}")
    except OSError as exc:
        raise RunFault(
            f"the output folder {output_dir} cannot be written ({exc.strerror or exc}); choose another --output_dir"
        ) from exc
    remove_temporary_files(output_dir)
    inputs = discover_inputs(dataset_dir, exclude=[output_dir], datalist_key=datalist_key)
    return RunReport(inputs, output_dir, settings, overwrite)


class RunReport:
    """Resume decisions, per-input rows and the final report of one batch-inference run (made by :func:`open_run`).

    Args:
        inputs: the discovered inputs (:func:`scripts.io.discovery.discover_inputs`).
        output_dir: the prepared output folder.
        settings: everything that changes the outputs (weights signature, image size, post-processing and output
            options); a previous row is reused only when its settings are equal.
        overwrite: segment every input again, even those a previous run finished.
    """

    def __init__(self, inputs: list[dict], output_dir: str, settings: dict | None = None, overwrite: bool = False):
        self.output_dir = output_dir
        self.records_dir = os.path.join(output_dir, "records")
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.settings = json.loads(json.dumps(settings or {}, sort_keys=True, default=str))
        self.settings_id = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self.inputs = inputs
        self._entries = {e["key"]: e for e in self.inputs}
        self.rows: dict[str, dict] = {}
        self.pending: list[dict] = []
        for entry in self.inputs:
            if entry["status"] != "pending":
                self.rows[entry["key"]] = self.base_row(entry["key"], status=entry["status"], reason=entry["reason"])
                continue
            previous = None if overwrite else self._reusable(entry)
            if previous is not None:
                self.rows[entry["key"]] = {**previous, "reused": True}
                continue
            self.pending.append(
                {
                    "image": entry["path"],
                    "case_key": entry["key"],
                    # absolute paths (datalist entries outside the datalist's folder) keep only their file name
                    "output_stem": output_stem(
                        os.path.basename(entry["input"]) if os.path.isabs(entry["input"]) else entry["input"],
                        entry["key"],
                    ),
                }
            )
        self.done_before = len(self.inputs) - len(self.pending)
        reused = sum(bool(r.get("reused")) for r in self.rows.values())
        if reused:
            logger.info(
                "%d inputs were finished by a previous run into %s and are not segmented again "
                "(--overwrite true to redo them)",
                reused,
                self.output_dir,
            )

    def entry(self, key: str) -> dict:
        """The discovery entry of ``key``."""
        return self._entries[key]

    def base_row(self, key: str, **values) -> dict:
        """A report row for input ``key`` with every column, filled with ``values``."""
        entry = self.entry(key)
        row = dict.fromkeys(COLUMNS)
        row.update(input=entry["input"], kind=entry["kind"], reused=False, quality_flags=[])
        row.update(values)
        return row

    def record(self, key: str, row: dict) -> None:
        """Store the row of a processed input, durably (``records/<key>.json``), for the report and resumed runs."""
        entry = self.entry(key)
        stored = {
            **row,
            "_source": {"size": entry["size"], "mtime_ns": entry["mtime_ns"]},
            "_settings": self.settings_id,
        }
        text = json.dumps(stored, indent=4, default=str)

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        atomic_write(os.path.join(self.records_dir, f"{key}.json"), write)
        self.rows[key] = row

    def _reusable(self, entry: dict) -> dict | None:
        path = os.path.join(self.records_dir, f"{entry['key']}.json")
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError):
            return None
        source = stored.pop("_source", {})
        if (
            stored.get("status") != "ok"
            or stored.pop("_settings", None) != self.settings_id
            or source.get("size") != entry["size"]
            or source.get("mtime_ns") != entry["mtime_ns"]
            or any(
                stored.get(c) and not os.path.isfile(os.path.join(self.output_dir, stored[c])) for c in OUTPUT_COLUMNS
            )
        ):
            return None
        return {c: stored.get(c) for c in COLUMNS}

    def final_rows(self) -> list[dict]:
        """One row per discovered file, in discovery order (inputs never processed are ``failed``)."""
        return [
            self.rows.get(e["key"]) or self.base_row(e["key"], status="failed", reason="not processed (run stopped)")
            for e in self.inputs
        ]

    def summary(self, rows: list[dict] | None = None) -> dict:
        rows = self.final_rows() if rows is None else rows
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
        return {
            "files_found": len(rows),
            **counts,
            "reused_from_previous_run": sum(bool(r.get("reused")) for r in rows),
            "exit_status": EXIT_INPUTS_FAILED if counts["failed"] else EXIT_OK,
        }

    def write(self) -> dict:
        """Write ``report.csv`` and ``report.json`` (atomically); return the summary."""
        rows = self.final_rows()
        summary = self.summary(rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c)) for c in COLUMNS})
        document = {
            "summary": summary,
            "started": self.started,
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "output_dir": self.output_dir,
            "settings": self.settings,
            "rows": rows,
        }
        atomic_write(os.path.join(self.output_dir, "report.csv"), lambda tmp: _write_text(tmp, buffer.getvalue()))
        atomic_write(
            os.path.join(self.output_dir, "report.json"),
            lambda tmp: _write_text(tmp, json.dumps(document, indent=4, default=str)),
        )
        return summary

    def finish(self) -> int:
        """Write the report, log the summary, and end the process with :data:`EXIT_INPUTS_FAILED` if any input failed.

        Returns :data:`EXIT_OK` otherwise (used as ``finalize`` of ``configs/inference.json``).
        """
        summary = self.write()
        for row in self.final_rows():
            if row["status"] == "failed":
                logger.warning("FAILED %s: %s", row["input"], row["reason"])
        logger.info(
            "%d files found: %d ok (%d from a previous run), %d skipped, %d failed. Report: %s",
            summary["files_found"],
            summary["ok"],
            summary["reused_from_previous_run"],
            summary["skipped"],
            summary["failed"],
            os.path.join(self.output_dir, "report.csv"),
        )
        if summary["exit_status"] != EXIT_OK:
            raise SystemExit(summary["exit_status"])
        return EXIT_OK


def _write_text(path: str, text: str) -> None:
    with open(path, "w", newline="") as f:
        f.write(text)


class FileProgressBar:
    """Ignite handler showing a tqdm bar of processed files out of all discovered files.

    ignite's ``ProgressBar`` counts iterations (batches) of the inputs still to do; this counts files, starting at the
    files already accounted for (skipped at discovery or finished by a previous run).

    Args:
        report: the run's :class:`RunReport` (files found, files already accounted for).
        desc: the bar's label.
    """

    def __init__(self, report: RunReport, desc: str = "files") -> None:
        self.total, self.initial, self.desc = len(report.inputs), report.done_before, desc
        self.bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _open(self, engine: Engine) -> None:
        self.bar = tqdm(
            total=self.total,
            initial=self.initial,
            desc=self.desc,
            unit="file",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def _update(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(len(engine.state.output))

    def _close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
