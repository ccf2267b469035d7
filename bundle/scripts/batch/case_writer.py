"""The ignite handler that turns each finished item into its outputs and report row, in worker processes.

Attached to the inference engine (:class:`scripts.batch.fault_tolerance.FaultTolerantEvaluator`) at
``ITERATION_COMPLETED``, it hands every item of the batch, with the network's prediction, to
:class:`scripts.batch.case_outputs.CaseOutputs` (post-processing to the input's grid, measurements, mask, SEG and
overlay files) and records the returned row with :meth:`scripts.batch.report.RunReport.record`.

Why processes: after the network, each input costs more full-resolution work (resampling, components, holes,
measurements, PNG/JPEG/DICOM encoding) than the network itself, mostly in Python and NumPy under one interpreter
lock. Worker processes, forked when the engine starts, do it on every core while the engine runs the next batches.
The items travel to them small: the network's input and prediction on its grid and the review image; the
full-size mask is made there.

Items whose loading or inference failed become ``failed`` (or ``skipped``) rows with their reason; an input whose
outputs fail becomes ``failed`` with the step that failed, and the run goes on. A fault of the run itself (a full
disk, an unwritable output folder) stops the run; a worker process that dies (killed, out of memory) fails only the
inputs it had in hand, and a new one takes over.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
from ignite.engine import Engine, Events

from ..io.errors import RunFault, describe_error, is_input_failure
from ..io.radiograph_view import NOT_A_FRONTAL_CHEST, taken_as
from .case_outputs import CaseOutputError, CaseOutputs, CaseSkippedError
from .fault_tolerance import ERROR_KEY, STATUS_KEY
from .report import OUTPUT_COLUMNS, RunReport

__all__ = ["CaseWriter"]

logger = logging.getLogger(__name__)

_WORKER_OUTPUTS: CaseOutputs | None = None  # the CaseOutputs of this worker process (set when it starts)


class CaseWriter:
    """Write every finished item's outputs and record its report row (see the module docstring).

    Args:
        report: the run's :class:`~scripts.batch.report.RunReport` (entries, rows, records).
        outputs: what to make of each item (:class:`~scripts.batch.case_outputs.CaseOutputs`).
        processes: worker processes that make the outputs while the engine goes on (0: in the engine's own thread).
            At most four items per process wait, so memory stays bounded; every row is recorded when the engine
            completes.
        pred_key: output key of the prediction (moved to the CPU before it travels).
    """

    def __init__(self, report: RunReport, outputs: CaseOutputs, processes: int = 2, pred_key: str = "pred") -> None:
        self.report = report
        self.outputs = outputs
        self.processes = max(0, int(processes))
        self.pred_key = pred_key
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[str, Future, ProcessPoolExecutor]] = deque()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.wait)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stop_and_raise)

    def _start(self, engine: Engine | None = None) -> None:
        """Fork the worker processes now, before the data loader's workers and the network's threads exist."""
        if self.processes and self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(self.outputs,),
            )
            self._pool.submit(int).result()  # a fork pool starts all its processes at the first task

    def __call__(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output, strict=True):
            key = item["case_key"]
            if ERROR_KEY in output:
                reason = output[ERROR_KEY]
                row = self.report.base_row(
                    key, status=output.get(STATUS_KEY, "failed"), reason=reason, taken_as=_taken_as_by_header(reason)
                )
                self.report.record(key, row)
                continue
            kind = self.report.entry(key)["kind"]
            output = {self.pred_key: output[self.pred_key]}
            if not self.processes:
                self._record(key, _make(self.outputs, item, output, kind))
                continue
            if self._pool is None:
                self._start()
            payload = pickle.dumps((_compact(item), _compact(output)), protocol=pickle.HIGHEST_PROTOCOL)
            self._pending.append((key, self._pool.submit(_make_in_worker, payload, kind), self._pool))
            self._record_finished(block_above=4 * self.processes)

    def wait(self, engine: Engine | None = None) -> None:
        """Record every row still in the workers' hands (raises a fault of the run one of them hit)."""
        self._record_finished(block_above=0)
        self._stop()

    def _record_finished(self, block_above: int) -> None:
        """Record the finished rows in the order the items came; wait while more than ``block_above`` are pending."""
        while self._pending and (len(self._pending) > block_above or self._pending[0][1].done()):
            key, future, pool = self._pending.popleft()
            try:
                fields = future.result()
            except BrokenProcessPool:  # a worker was killed (e.g. out of memory): only the inputs in hand are lost
                fields = {"status": "failed", "reason": "making the outputs: the worker process stopped unexpectedly"}
                if pool is self._pool:
                    self._stop()
            except BaseException:  # a fault of the run: record what the workers finished, leave the rest
                self._record_after_fault()
                raise
            self._record(key, fields)

    def _record_after_fault(self) -> None:
        """After a fault of the run: let the workers finish the inputs in hand (queued ones are cancelled), record
        those that are complete, and remove the files of any whose row cannot be recorded, so that no output is left
        without its row."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        while self._pending:
            key, future, _ = self._pending.popleft()
            if future.cancelled() or future.exception() is not None:
                continue  # a failed input's own files are already removed (CaseOutputs)
            fields = future.result()
            try:
                self._record(key, fields)
            except (Exception, RunFault):  # the disk is full, say: its files must not stay without their row
                for column in OUTPUT_COLUMNS:
                    if fields.get(column):
                        _remove(os.path.join(self.report.output_dir, fields[column]))

    def _record(self, key: str, fields: dict) -> None:
        if fields["status"] != "ok":
            logger.warning("%s: %s", self.report.entry(key)["input"], fields["reason"])
        try:
            self.report.record(key, self.report.base_row(key, **fields))
        except BaseException as exc:  # e.g. a value the record cannot hold: the input is still accounted for
            if not is_input_failure(exc):
                raise
            reason = f"recording the report row: {describe_error(exc)}"
            self.report.record(key, self.report.base_row(key, status="failed", reason=reason))

    def _stop_and_raise(self, engine: Engine, exc: BaseException) -> None:
        # ignite hands an engine's exception to its EXCEPTION_RAISED handlers instead of raising it
        try:
            self._record_after_fault()
        finally:
            raise exc

    def _stop(self, engine: Engine | None = None, wait: bool = True) -> None:
        """Shut the worker processes down (the next item starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _compact(data: dict) -> dict:
    """``data`` with every tensor copied to the CPU on its own: an item of a decollated batch is a view of the batch's
    tensors, and pickled for a worker a view carries its whole storage (the review images of all the batch).

    The item is then pickled by the standard pickler, tensors inline, rather than by multiprocessing's, which torch
    makes put every tensor into a shared-memory file: one file per tensor costs as much, and a full ``/dev/shm`` or a
    file-size limit would fail items that are fine."""
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def _start_worker(outputs: CaseOutputs) -> None:
    global _WORKER_OUTPUTS
    _WORKER_OUTPUTS = outputs
    torch.set_num_threads(1)  # one core per process; a forked process must not start the parent's thread pool


def _make_in_worker(payload: bytes, kind: str) -> dict:
    item, output = pickle.loads(payload)
    return _make(_WORKER_OUTPUTS, item, output, kind)


def _make(outputs: CaseOutputs, item: dict, output: dict, kind: str) -> dict:
    """The row fields of one item: ``ok`` with its measurements and outputs, or ``failed`` with the step and reason."""
    try:
        return outputs(item, output, kind)
    except CaseSkippedError as exc:
        return {"status": "skipped", "reason": exc.reason, "taken_as": exc.taken_as}
    except CaseOutputError as exc:
        return {"status": "failed", "reason": str(exc)}


def _taken_as_by_header(reason: str) -> str | None:
    """``taken_as`` of an input the reader refused for what its header says (see
    :class:`scripts.io.dicom.RadiographDicomReader`), else ``None``."""
    marker = NOT_A_FRONTAL_CHEST + ": "
    return taken_as("not a frontal chest", header=reason.split(marker, 1)[1]) if marker in reason else None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
