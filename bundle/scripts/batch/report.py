"""The run report of batch inference: one row per discovered file, resume bookkeeping and the exit status.

:func:`open_run` starts a run from the config before the engine runs: it prepares the output folder, discovers the
inputs (:mod:`scripts.io.discovery`) and returns the :class:`RunReport`, which decides which of them still need
segmenting, receives one row per processed input from :class:`scripts.batch.case_writer.CaseWriter`, and at the end
writes ``report.csv`` and ``report.json`` and returns the exit status. :class:`FileProgressBar` shows the files done
out of the files found.

Resume: each finished input's row is also appended, after its output files, as one JSON line to
``records/rank-<rank>.jsonl`` in the output folder (one file per process of a sharded run, so that no two processes
write one file; one line per input rather than one file per input, so that an archive of 100,000 radiographs does not
leave 100,000 small files). A later run into the same folder reuses a row (and does not segment the input again) when
its status was ``ok``, the input file has the same size and modification time, the run settings (weights, image size,
post-processing, outputs) are the same, and its output files still exist; ``overwrite=True`` segments everything
again. Failed inputs are always retried. A run killed half-way therefore resumes where it stopped (a line cut short
by the kill is ignored), and the final report has exactly one row per discovered file.

Sharded runs (``configs/multi_gpu_inference.json`` under torchrun, see :func:`open_run`): rank 0 prepares the folder,
discovers the inputs and decides what to reuse, and sends that to every rank; rank ``r`` of ``n`` segments the
pending inputs ``r, r + n, r + 2n, ...`` and records its rows in its own file; at the end rank 0 merges the rows that
this run recorded into the one report, identical (apart from the start and finish times) to a single process's.

Exit status (see :data:`EXIT_OK`, :data:`EXIT_INPUTS_FAILED`): 0 when every discovered file is ``ok`` or ``skipped``,
3 when at least one is ``failed`` (the report says which and why). A run that cannot start (no input folder, no
weights, bad arguments) or that a fault of its own stops (an output folder that is not writable, a full disk: see
:class:`scripts.io.errors.RunFault`) ends with status 1 and a message; the rows recorded so far stay in
``records/`` and a re-run continues from them.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator

import torch.distributed as dist
from ignite.engine import Engine, Events
from tqdm import tqdm

from ..io.discovery import discover_inputs
from ..io.errors import RunFault
from ..io.files import atomic_write, remove_temporary_files
from ..process_group import get_rank, get_world_size, init_distributed
from .dicomweb import PACS_FOLDER, DicomwebSource
from .fault_tolerance import run_fault
from .fingerprint import settings_id
from .folder_lock import claim_output_folder
from .review_page import PAGE_NAME, ROWS_NAME, write_review_page
from .rle import ARCHIVE_NAME, write_mask_archive
from .writers import output_stem, seg_sop_uid

__all__ = [
    "RunReport",
    "open_run",
    "read_record_at",
    "read_records",
    "FileProgressBar",
    "COLUMNS",
    "REPORT_FILES",
    "EXIT_OK",
    "EXIT_INPUTS_FAILED",
]

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
    "qc_score",
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
OUTPUT_COLUMNS = ("mask_png", "mask_nifti", "seg_dicom", "overlay")
# the files of the run as a whole in the output folder (besides records/ and the mask archive)
REPORT_FILES = ("report.csv", "report.json", PAGE_NAME, ROWS_NAME)


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
    shard: bool = False,
    write_rle: bool = False,
    pacs: DicomwebSource | None = None,
) -> RunReport:
    """Start a batch-inference run: prepare the output folder (created, writable, the temporary files a killed run
    left removed), discover the inputs, and return the run's :class:`RunReport`.

    Args:
        dataset_dir: input folder (searched recursively) or datalist JSON file.
        output_dir: output folder; also holds ``records/``, ``report.csv`` and ``report.json``.
        overwrite: segment every input again, even those a previous run finished.
        settings: everything that changes the outputs (see :class:`RunReport`).
        datalist_key: list to read from a datalist JSON file (default ``"testing"``, else ``"test"``).
        shard: join the process group torchrun set up (:func:`scripts.process_group.init_distributed`); rank 0
            prepares the folder, discovers the inputs and decides what to reuse, and every rank gets its share of the
            pending inputs (see the module docstring). The output folder must be shared by all ranks (all nodes).
        write_rle: also write all masks into one archive (see :class:`RunReport`).
        pacs: a DICOMweb server to take the inputs from instead of ``dataset_dir``: they are retrieved into the output
            folder's ``pacs_inputs/`` (see :class:`scripts.batch.dicomweb.DicomwebSource`).

    Raises:
        RunFault: the output folder cannot be created or written, or another batch run is writing to it.
        ValueError: the output folder is the input folder.
        FileNotFoundError: no input folder, or no file in it.
        RuntimeError: ``shard`` without torchrun.
    """
    if shard:
        init_distributed()
    rank, world = get_rank(), get_world_size()
    report = [None]
    if rank == 0:
        try:
            report[0] = _prepare_run(dataset_dir, output_dir, overwrite, settings, datalist_key, write_rle, pacs)
        except (Exception, RunFault) as exc:  # every rank stops with it, rather than wait for a report
            report[0] = exc
    if world > 1:
        dist.broadcast_object_list(report, src=0)
    if isinstance(report[0], BaseException):
        raise report[0]
    report = report[0]
    if world > 1:
        report.use_shard(rank, world)
    return report


def _prepare_run(
    dataset_dir: str,
    output_dir: str,
    overwrite: bool,
    settings: dict | None,
    datalist_key: str | None,
    write_rle: bool,
    pacs: DicomwebSource | None = None,
) -> RunReport:
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    if pacs is not None and dataset_dir:
        raise ValueError("give one source: --dataset_dir or --dicomweb_url, not both")
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
    claim_output_folder(output_dir)  # before anything in the folder is touched: another run may be writing there
    remove_temporary_files(output_dir)
    if pacs is not None:  # this run's SEG of an instance has a known UID: one in the PACS already means it is done
        seed = settings_id(settings)
        inputs = pacs.discover(os.path.join(output_dir, PACS_FOLDER), seg_uid=lambda sop: seg_sop_uid(sop, seed))
    else:
        inputs = discover_inputs(dataset_dir, exclude=[output_dir], datalist_key=datalist_key)
    return RunReport(inputs, output_dir, settings, overwrite, write_rle)


def read_records(records_dir: str) -> dict[str, dict]:
    """The last stored record of every input key in the ``*.jsonl`` files of ``records_dir`` (lines that do not
    parse, such as the last line of a process killed while writing it, are skipped).

    A record's run-length masks (``_rle``, large) are not kept in memory: ``_at`` says where its line is
    (``[file name, byte offset]``) for :func:`read_record_at`.
    """
    latest: dict[str, dict] = {}
    try:
        names = sorted(n for n in os.listdir(records_dir) if n.endswith(".jsonl"))
    except OSError:
        return latest
    for name in names:
        try:
            f = open(os.path.join(records_dir, name), "rb")
        except OSError:
            continue
        with f:
            offset = 0
            for line in f:
                at, offset = offset, offset + len(line)
                try:
                    stored = json.loads(line)
                    key, written = stored["_key"], stored["_written"]
                except (ValueError, TypeError, KeyError):
                    continue
                if key not in latest or written >= latest[key]["_written"]:
                    if stored.pop("_rle", None) is not None:
                        stored["_at"] = [name, at]
                    latest[key] = stored
    return latest


def read_record_at(records_dir: str, at: list) -> dict:
    """The whole record (run-length masks included) at ``at`` (see :func:`read_records`)."""
    with open(os.path.join(records_dir, at[0]), "rb") as f:
        f.seek(at[1])
        return json.loads(f.readline())


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
        self.records_dir = os.path.join(output_dir, "records")
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.settings = json.loads(json.dumps(settings or {}, sort_keys=True, default=str))
        self.settings_id = settings_id(self.settings)
        self.inputs = inputs
        self.write_rle = bool(write_rle)
        self.run_id = uuid.uuid4().hex
        self.rank, self.world_size = 0, 1
        self._entries = {e["key"]: e for e in self.inputs}
        self._records = None  # this process's open records file
        self._synced = 0.0
        self.rows: dict[str, dict] = {}
        self.pending: list[dict] = []
        previous_records = {} if overwrite else read_records(self.records_dir)
        for entry in self.inputs:
            if entry["status"] != "pending":
                self.rows[entry["key"]] = self.base_row(entry["key"], status=entry["status"], reason=entry["reason"])
                continue
            previous = self._reusable(entry, previous_records.get(entry["key"]))
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

    def use_shard(self, rank: int, world_size: int) -> None:
        """Keep only this rank's share of the pending inputs: those at positions ``rank, rank + world_size, ...``."""
        self.rank, self.world_size = int(rank), int(world_size)
        self.pending = self.pending[self.rank :: self.world_size]

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
            self._append_record(line)
        except OSError as exc:  # the records are the run's own: any error writing them is a fault of the run
            fault = run_fault(exc, self.records_dir)
            raise fault or RunFault(f"cannot write in {self.records_dir}: {exc.strerror or exc}") from exc
        # the row as the report will hold it, whether it comes from this process or, merged, from a record
        self.rows[key] = _row_of(json.loads(line))

    def _append_record(self, line: str) -> None:
        if self._records is None:
            path = os.path.join(self.records_dir, f"rank-{self.rank}.jsonl")
            self._records = open(path, "a+", encoding="utf-8")
            if self._records.tell():  # a killed process may have left its last line unfinished: start a new one
                self._records.seek(self._records.tell() - 1)
                last = self._records.read(1)
                if last != "\n":
                    self._records.write("\n")
        self._records.write(line + "\n")
        self._records.flush()  # in the system's hands: survives the process being killed
        if time.monotonic() - self._synced > 2.0:  # on the disk every 2 s: survives a power cut too
            os.fsync(self._records.fileno())
            self._synced = time.monotonic()

    def close_records(self) -> None:
        """Sync and close this process's records file."""
        if self._records is not None:
            self._records.flush()
            os.fsync(self._records.fileno())
            self._records.close()
            self._records = None

    def _reusable(self, entry: dict, stored: dict | None) -> dict | None:
        if (
            stored is None
            or stored.get("status") != "ok"
            or stored.get("_settings") != self.settings_id
            or stored.get("_source", {}).get("size") != entry["size"]
            or stored.get("_source", {}).get("mtime_ns") != entry["mtime_ns"]
            or any(
                stored.get(c) and not os.path.isfile(os.path.join(self.output_dir, stored[c])) for c in OUTPUT_COLUMNS
            )
        ):
            return None
        return _row_of(stored)

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
        """Write ``report.csv``, ``report.json`` (atomically) and the review page (``review.html``); return the
        summary."""
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
        write_review_page(self.output_dir, rows, summary, self.settings)
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
        self.shown = report.rank == 0  # one bar for a sharded run: rank 0's, counting its share
        if report.world_size > 1:
            self.total, self.initial = len(report.pending), 0
            self.desc = f"{desc} (rank 0 of {report.world_size})"
        self.bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        if not self.shown:
            return
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
