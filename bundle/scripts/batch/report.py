"""The run report of batch inference: one row per discovered file, the resume decision per input, and the exit
status.

:func:`scripts.batch.run_start.open_run` makes the :class:`RunReport` before the engine runs; it decides which inputs
still need segmenting (:func:`scripts.batch.resume.reusable`), receives one row per processed input from
:class:`scripts.batch.case_writer.CaseWriter` and stores it (:mod:`scripts.batch.records`), and at the end writes the
report files (:mod:`scripts.batch.report_files`) and returns the exit status. The progress bar is
:class:`scripts.batch.progress.FileProgressBar`.

Resume: each finished input's row is also appended, after its output files, as one JSON line to
``records/rank-<rank>.jsonl`` in the output folder. A later run into the same folder reuses a row (and does not segment
the input again) when its status was ``ok``, the input file has the same size and modification time, the run's
fingerprint (:mod:`scripts.batch.fingerprint`) is the same, and its output files still exist; ``overwrite=True``
segments everything again. Failed inputs are always retried. A run killed half-way therefore resumes where it stopped,
and the final report has exactly one row per discovered file.

Sharded runs (``configs/multi_gpu_inference.json`` under torchrun): rank 0 prepares the folder, discovers the inputs
and decides what to reuse, and sends that to every rank; rank ``r`` of ``n`` segments the pending inputs ``r, r + n,
r + 2n, ...`` and records its rows in its own file; at the end rank 0 merges the rows that this run recorded into the
one report, identical (apart from the start and finish times) to a single process's.

Exit status (see :data:`EXIT_OK`, :data:`EXIT_INPUTS_FAILED`): 0 when every discovered file is ``ok`` or ``skipped``,
3 when at least one is ``failed`` (the report says which and why). A run that cannot start (no input folder, no
weights, bad arguments, another run writing to the output folder) or that a fault of its own stops (an output folder
that is not writable, a full disk: see :class:`scripts.io.errors.RunFault`) ends with status 1 and a message; the rows
recorded so far stay in ``records/`` and a re-run continues from them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator

import torch.distributed as dist

from ..io.errors import RunFault
from .fault_tolerance import run_fault
from .fingerprint import settings_id
from .records import RECORDS_FOLDER, RecordFile, read_record_at, read_records
from .report_files import write_report_files
from .resume import OUTPUT_COLUMNS, reusable
from .rle import ARCHIVE_NAME, write_mask_archive
from .writers import output_stem

__all__ = ["RunReport", "COLUMNS", "OUTPUT_COLUMNS", "EXIT_OK", "EXIT_INPUTS_FAILED"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INPUTS_FAILED = 3

COLUMNS = (
    "input",
    "kind",
    "status",
    "reason",
    "taken_as",
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
    "qc_score",
    "lung_shape",
    "quality_flags",
    "mask_png",
    "mask_nifti",
    "seg_dicom",
    "overlay",
    "sop_instance_uid",
    "seg_sop_instance_uid",
    "pixel_processing",
    "reused",
)


class RunReport:
    """Resume decisions, per-input rows and the final report of one batch-inference run (made by :func:`open_run`).

    Args:
        inputs: the discovered inputs (:func:`scripts.io.discovery.discover_inputs`).
        output_dir: the prepared output folder.
        settings: everything that changes the outputs (weights signature, image size, post-processing and output
            options); a previous row is reused only when its settings are equal.
        overwrite: segment every input again, even those a previous run finished.
        write_rle: also write every mask of the run into one archive, ``masks_rle.csv.gz``
            (:mod:`scripts.batch.rle`), from the rows' run-length masks (``_rle``) in the records.
    """

    def __init__(
        self,
        inputs: list[dict],
        output_dir: str,
        settings: dict | None = None,
        overwrite: bool = False,
        write_rle: bool = False,
    ):
        self.output_dir = output_dir
        self.records_dir = os.path.join(output_dir, RECORDS_FOLDER)
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.settings = json.loads(json.dumps(settings or {}, sort_keys=True, default=str))
        self.settings_id = settings_id(self.settings)
        self.inputs = inputs
        self.write_rle = bool(write_rle)
        self.run_id = uuid.uuid4().hex
        self.rank, self.world_size = 0, 1
        self._entries = {e["key"]: e for e in self.inputs}
        self._records = RecordFile(self.records_dir)
        self.rows: dict[str, dict] = {}
        self.pending: list[dict] = []
        previous_records = {} if overwrite else read_records(self.records_dir)
        for entry in self.inputs:
            if entry["status"] != "pending":
                self.rows[entry["key"]] = self.base_row(entry["key"], status=entry["status"], reason=entry["reason"])
                continue
            previous = previous_records.get(entry["key"])
            if reusable(entry, previous, self.settings_id, self.output_dir):
                self.rows[entry["key"]] = {**_row_of(previous), "reused": True}
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

    def use_shard(self, rank: int, world_size: int) -> None:
        """Keep only this rank's share of the pending inputs: those at positions ``rank, rank + world_size, ...``."""
        self.rank, self.world_size = int(rank), int(world_size)
        self.pending = self.pending[self.rank :: self.world_size]
        self._records = RecordFile(self.records_dir, self.rank)

    def record(self, key: str, row: dict) -> None:
        """Store the row of a processed input, durably (a line of ``records/rank-<rank>.jsonl``), for the report and
        resumed runs."""
        entry = self.entry(key)
        stored = {
            **row,
            "_key": key,
            "_source": {"size": entry["size"], "mtime_ns": entry["mtime_ns"]},
            "_settings": self.settings_id,
            "_run": self.run_id,
            "_written": time.time_ns(),
        }
        line = json.dumps(stored, default=str, separators=(",", ":"))
        try:
            self._records.append(line)
        except OSError as exc:  # the records are the run's own: any error writing them is a fault of the run
            fault = run_fault(exc, self.records_dir)
            raise fault or RunFault(f"cannot write in {self.records_dir}: {exc.strerror or exc}") from exc
        # the row as the report will hold it, whether it comes from this process or, merged, from a record
        self.rows[key] = _row_of(json.loads(line))

    def close_records(self) -> None:
        """Sync and close this process's records file."""
        self._records.close()

    def merge_shards(self, records: dict[str, dict]) -> None:
        """Rank 0 of a sharded run: take the rows every rank recorded in this run from the records
        (:func:`read_records`)."""
        for key, stored in records.items():
            if stored.get("_run") == self.run_id and key in self._entries:
                self.rows[key] = _row_of(stored)

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
        """Write the report files (:func:`scripts.batch.report_files.write_report_files`); return the summary."""
        rows = self.final_rows()
        summary = self.summary(rows)
        write_report_files(self.output_dir, COLUMNS, rows, summary, self.settings, self.started)
        return summary

    def finish(self, exit: bool = True) -> int:
        """Close the records, write the report (rank 0, after every rank has finished its share), log the summary and
        return the exit status: :data:`EXIT_INPUTS_FAILED` if any input failed, else :data:`EXIT_OK`.

        Args:
            exit: end the process with that status when it is not :data:`EXIT_OK` (the ``finalize`` of
                ``configs/inference.json``); a sharded run ends it after leaving the process group
                (:meth:`exit`).
        """
        self.close_records()
        status = [EXIT_OK]
        if self.world_size > 1:
            dist.barrier()  # every rank's records are complete
        if self.rank == 0:
            # the records of every rank, read once for the merge and the mask archive
            records = read_records(self.records_dir) if self.world_size > 1 or self.write_rle else {}
            if self.world_size > 1:
                self.merge_shards(records)
            if self.write_rle:
                self.write_archive(records)
            status[0] = self._write_and_log()
        if self.world_size > 1:
            dist.broadcast_object_list(status, src=0)
        self.exit_status: int = status[0]
        if exit:
            self.exit()
        return self.exit_status

    def exit(self) -> None:
        """End the process with the run's exit status when it is not :data:`EXIT_OK` (after :meth:`finish`)."""
        if getattr(self, "exit_status", EXIT_OK) != EXIT_OK:
            raise SystemExit(self.exit_status)

    def write_archive(self, records: dict[str, dict]) -> str:
        """Write ``masks_rle.csv.gz``: the run-length masks of every ``ok`` row, in discovery order, streamed from the
        records (:func:`read_records`; one mask in memory at a time); returns its path."""

        def rows() -> Iterator[dict]:
            for row, entry in zip(self.final_rows(), self.inputs, strict=True):
                stored = records.get(entry["key"])
                if row["status"] != "ok" or stored is None or "_at" not in stored:
                    continue
                masks = read_record_at(self.records_dir, stored["_at"])["_rle"]
                yield {**row, "height": row["rows"], "width": row["columns"], **masks}

        return write_mask_archive(os.path.join(self.output_dir, ARCHIVE_NAME), rows())

    def _write_and_log(self) -> int:
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
        return summary["exit_status"]


def _row_of(stored: dict) -> dict:
    """The report row (every column, nothing else) of a stored record."""
    return {c: stored.get(c) for c in COLUMNS}
