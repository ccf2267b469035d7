"""Keep a batch-inference run going when single inputs fail: every failure of one input becomes that input's result,
never an exception that stops the engine; only a fault of the run itself (:class:`RunFault`) stops it.

How an input that cannot be processed travels (a corrupt, truncated, undecodable or blank file):

1. :class:`GuardedDataset` catches the exception of the item's transforms (in the DataLoader worker) and returns the
   item's datalist entry with ``error`` set to the step and the cause (e.g. ``"reading the image: cannot decode pixel
   data ..."``) and ``status`` ``failed`` (``skipped`` for :class:`~scripts.io.errors.NotARadiograph`).
2. :func:`collate_skipping_failures` collates the good items as MONAI's ``list_data_collate`` does and puts the failed
   ones, uncollated, in the batch under ``failed``.
3. :class:`FaultTolerantEvaluator` takes them out of the batch before the network step (a batch with no good item
   skips the network), runs the usual ``SupervisedEvaluator`` iteration on the rest, then appends the failed items to
   ``engine.state.batch`` / ``engine.state.output`` as ``{"error": reason, "status": ...}`` outputs. When the
   network step fails for a batch, each item is run alone, so only the item that fails is lost. A post-processing
   error of one item is caught the same way.

Handlers attached at ``ITERATION_COMPLETED`` therefore see one ``(batch item, output item)`` pair per input, and an
output item either holds ``pred`` or ``error``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Sequence

import torch
from monai.data import Dataset, decollate_batch, list_data_collate
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents, engine_apply_transform
from monai.utils import CommonKeys

from ..io.errors import InputError, NotARadiograph, RunFault, describe_error, is_input_failure
from ..settings import amp_enabled

__all__ = [
    "GuardedDataset",
    "collate_skipping_failures",
    "FaultTolerantEvaluator",
    "run_fault",
    "ERROR_KEY",
    "FAILED_KEY",
    "RAGGED_KEY",
    "STATUS_KEY",
    "describe_error",
]

logger = logging.getLogger(__name__)

ERROR_KEY = "error"
FAILED_KEY = "failed"
RAGGED_KEY = "ragged"
STATUS_KEY = "status"
# errors that no other input would escape either: the output's file system is full or read-only, or the process may
# not write files that large (ulimit -f)
_RUN_FAULT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_TRANSFORM_NAME = re.compile(r"applying transform <?(?:[\w.]+\.)?(\w+)")


def run_fault(exc: BaseException, output_dir: str | None = None) -> RunFault | None:
    """The :class:`RunFault` that ``exc`` means, or ``None`` when it concerns one input only.

    A full disk, an exceeded quota or a read-only file system stop the run; so does a permission error on a path in
    ``output_dir`` (the output folder is not writable). Anything else is the input's own failure.
    """
    if isinstance(exc, RunFault):
        return exc
    if not isinstance(exc, OSError):
        return None
    if exc.errno in _RUN_FAULT_ERRNOS:
        return RunFault(
            f"cannot write {exc.filename or 'in ' + str(output_dir or 'the output folder')}: {exc.strerror or exc}"
        )
    if exc.errno in (errno.EACCES, errno.EPERM) and output_dir and exc.filename:
        root = os.path.realpath(output_dir)
        if os.path.realpath(str(exc.filename)).startswith(root + os.sep):
            return RunFault(f"the output folder {output_dir} is not writable ({exc.strerror}: {exc.filename})")
    return None


def _step_of(exc: BaseException) -> str:
    """The pipeline step an exception from MONAI's ``Compose`` came from: the innermost "applying transform" wrapper
    names the transform."""
    name = None
    while exc is not None:
        match = _TRANSFORM_NAME.match(str(exc))
        if match:
            name = match.group(1)
        exc = exc.__cause__
    if name in (None, "LoadImaged", "LoadImage"):
        return "reading the image"
    return f"pre-processing ({name})"


class GuardedDataset(Dataset):
    """A MONAI ``Dataset`` whose items never raise: an item whose transform fails is returned as its datalist entry
    plus ``{"error": "<step>: <reason>", "status": "failed"}`` (``"skipped"`` for an image with nothing to segment).

    Args:
        data: the datalist (dicts).
        transform: the per-item transforms (loading and pre-processing).
    """

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except BaseException as exc:  # MemoryError from a lying header included: that item is lost, not the run
            if not is_input_failure(exc):
                raise
            entry = dict(self.data[index])
            path = entry.get(CommonKeys.IMAGE)
            cause = _cause(exc, InputError)
            step = cause.step if cause is not None and cause.step is not None else _step_of(exc)
            if isinstance(cause, NotARadiograph):  # nothing to segment: the reason says why, no step needed
                entry[ERROR_KEY], entry[STATUS_KEY] = describe_error(exc, path), "skipped"
            else:
                reason = describe_error(exc, path)
                entry[ERROR_KEY], entry[STATUS_KEY] = f"{step}: {reason}" if step else reason, "failed"
            logger.warning("cannot load %s: %s", path if path is not None else index, entry[ERROR_KEY])
            return entry


def _cause(exc: BaseException | None, kind: type) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain of causes (MONAI wraps a transform's error)."""
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__
    return None


def collate_skipping_failures(items: Sequence[dict]) -> dict:
    """Collate the items that loaded with MONAI's ``list_data_collate``; list the failed ones under ``failed``.

    Tensors that differ in shape from item to item (the review images, each at its image's own size) cannot be
    stacked: they travel as one list per key under ``ragged``, and :class:`FaultTolerantEvaluator` gives each item its
    own back after the network step.
    """
    good = [dict(i) for i in items if ERROR_KEY not in i]
    ragged_keys = [
        key
        for key, value in (good[0].items() if good else ())
        if isinstance(value, torch.Tensor) and len({tuple(getattr(i.get(key), "shape", ())) for i in good}) > 1
    ]
    ragged = {key: [i.pop(key, None) for i in good] for key in ragged_keys}
    batch = list_data_collate(good) if good else {}
    if ragged:
        batch[RAGGED_KEY] = ragged
    batch[FAILED_KEY] = [i for i in items if ERROR_KEY in i]
    return batch


def _failure(item: dict) -> dict:
    return {ERROR_KEY: item[ERROR_KEY], STATUS_KEY: item.get(STATUS_KEY, "failed")}


class FaultTolerantEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` for batches from :func:`collate_skipping_failures`.

    It runs the network only on the items that loaded (each alone when the batch fails), catches post-processing
    errors per item, and reports failed items to the handlers as outputs ``{"error": reason, "status": ...}`` (see
    the module docstring). It takes the same arguments as ``SupervisedEvaluator``; ``decollate`` must stay ``True``
    (handlers work per item).
    """

    def __init__(self, *args, **kwargs) -> None:
        if not kwargs.get("decollate", True):
            raise ValueError("FaultTolerantEvaluator needs decollate=True: failures are reported per item.")
        if "amp" in kwargs:  # a config's switch: "auto", or a word ("--amp false")
            kwargs["amp"] = amp_enabled(kwargs["amp"])
        super().__init__(*args, **kwargs)

    def _register_postprocessing(self, posttrans: Callable) -> None:
        @self.on(IterationEvents.MODEL_COMPLETED)
        def _run_postprocessing(engine: FaultTolerantEvaluator) -> None:
            for i, (b, o) in enumerate(zip(engine.state.batch, engine.state.output, strict=True)):
                if ERROR_KEY in o:
                    continue
                try:
                    engine.state.batch[i], engine.state.output[i] = engine_apply_transform(b, o, posttrans)
                except BaseException as exc:
                    if not is_input_failure(exc):
                        raise
                    if run_fault(exc):
                        raise
                    reason = describe_error(exc)
                    name = getattr(b.get(CommonKeys.IMAGE), "meta", {}).get("filename_or_obj", i)
                    logger.warning("post-processing failed for %s: %s", name, reason)
                    engine.state.output[i] = {ERROR_KEY: f"post-processing: {reason}", STATUS_KEY: "failed"}

    def _iteration(self, engine: FaultTolerantEvaluator, batchdata: dict) -> list[dict]:
        failed = list(batchdata.pop(FAILED_KEY, []))
        ragged = batchdata.pop(RAGGED_KEY, {})
        if CommonKeys.IMAGE not in batchdata:  # every item of this batch failed to load: nothing for the network
            output, batch = [], []
        else:
            try:
                output = list(super()._iteration(engine, batchdata))
                batch = list(engine.state.batch)
            except BaseException as exc:
                if not is_input_failure(exc):
                    raise
                if run_fault(exc):
                    raise
                logger.warning("the network failed on a batch (%s): running its items one by one", describe_error(exc))
                batch, output = self._one_by_one(engine, batchdata)
        for key, values in ragged.items():  # the items keep their order through the network step
            for item, value in zip(batch, values, strict=True):
                item[key] = value
        engine.state.batch = batch + failed
        return output + [_failure(item) for item in failed]

    def _one_by_one(self, engine: FaultTolerantEvaluator, batchdata: dict) -> tuple[list[dict], list[dict]]:
        """Run the network step for each item of a batch alone; an item that fails gets an ``inference`` error."""
        batch, output = [], []
        for item in decollate_batch(batchdata, detach=False):
            try:
                # MONAI's iteration decollates engine.state.batch, not its argument: both must be this item's batch
                engine.state.batch = list_data_collate([item])
                output += list(super()._iteration(engine, engine.state.batch))
                batch += list(engine.state.batch)
            except BaseException as exc:
                if not is_input_failure(exc):
                    raise
                if run_fault(exc):
                    raise
                batch.append(item)
                output.append({ERROR_KEY: f"inference: {describe_error(exc)}", STATUS_KEY: "failed"})
        return batch, output
