"""Keep a batch-inference run going when single inputs fail: every failure becomes a per-item result, never an
exception that stops the engine.

How an item that cannot be loaded travels (a corrupt, truncated or undecodable file):

1. :class:`GuardedDataset` catches the exception of the item's transforms (in the DataLoader worker) and returns the
   item's datalist entry with ``error`` set to the cause (e.g. ``"ValueError: IM0003: cannot decode pixel data ..."``).
2. :func:`collate_skipping_failures` collates the good items as MONAI's ``list_data_collate`` does and puts the failed
   ones, uncollated, in the batch under ``failed``.
3. :class:`FaultTolerantEvaluator` takes them out of the batch before the network step (a batch with no good item
   skips the network), runs the usual ``SupervisedEvaluator`` iteration on the rest, then appends the failed items to
   ``engine.state.batch`` / ``engine.state.output`` as ``{"error": reason}`` outputs. A post-processing error of one
   item is caught the same way.

Handlers attached at ``ITERATION_COMPLETED`` therefore see one ``(batch item, output item)`` pair per input, and an
output item either holds ``pred`` or ``error``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monai.data import Dataset, list_data_collate
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents, engine_apply_transform
from monai.utils import CommonKeys

__all__ = [
    "GuardedDataset",
    "collate_skipping_failures",
    "FaultTolerantEvaluator",
    "ERROR_KEY",
    "FAILED_KEY",
    "describe_error",
]

logger = logging.getLogger(__name__)

ERROR_KEY = "error"
FAILED_KEY = "failed"


def describe_error(exc: BaseException) -> str:
    """``"Type: message"`` of the error behind ``exc``: MONAI's ``apply_transform`` wraps a transform's error in a
    ``RuntimeError("applying transform ...")`` that only names the transform, so those wrappers are skipped."""
    while exc.__cause__ is not None and str(exc).startswith("applying transform"):
        exc = exc.__cause__
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


class GuardedDataset(Dataset):
    """A MONAI ``Dataset`` whose items never raise: an item whose transform fails is returned as its datalist entry
    plus ``{"error": reason}``.

    Args:
        data: the datalist (dicts).
        transform: the per-item transforms (loading and pre-processing).
    """

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as exc:
            entry = dict(self.data[index])
            entry[ERROR_KEY] = describe_error(exc)
            logger.warning("cannot load %s: %s", entry.get(CommonKeys.IMAGE, index), entry[ERROR_KEY])
            return entry


def collate_skipping_failures(items: Sequence[dict]) -> dict:
    """Collate the items that loaded with MONAI's ``list_data_collate``; list the failed ones under ``failed``."""
    good = [i for i in items if ERROR_KEY not in i]
    batch = list_data_collate(good) if good else {}
    batch[FAILED_KEY] = [i for i in items if ERROR_KEY in i]
    return batch


class FaultTolerantEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` for batches from :func:`collate_skipping_failures`.

    It runs the network only on the items that loaded, catches post-processing errors per item, and reports failed
    items to the handlers as outputs ``{"error": reason}`` (see the module docstring). It takes the same arguments as
    ``SupervisedEvaluator``; ``decollate`` must stay ``True`` (handlers work per item).
    """

    def __init__(self, *args, **kwargs) -> None:
        if not kwargs.get("decollate", True):
            raise ValueError("FaultTolerantEvaluator needs decollate=True: failures are reported per item.")
        super().__init__(*args, **kwargs)

    def _register_postprocessing(self, posttrans: Callable) -> None:
        @self.on(IterationEvents.MODEL_COMPLETED)
        def _run_postprocessing(engine: FaultTolerantEvaluator) -> None:
            for i, (b, o) in enumerate(zip(engine.state.batch, engine.state.output)):
                try:
                    engine.state.batch[i], engine.state.output[i] = engine_apply_transform(b, o, posttrans)
                except Exception as exc:
                    reason = describe_error(exc)
                    name = getattr(b.get(CommonKeys.IMAGE), "meta", {}).get("filename_or_obj", i)
                    logger.warning("post-processing failed for %s: %s", name, reason)
                    engine.state.output[i] = {ERROR_KEY: f"post-processing: {reason}"}

    def _iteration(self, engine: FaultTolerantEvaluator, batchdata: dict) -> list[dict]:
        failed = list(batchdata.pop(FAILED_KEY, []))
        if CommonKeys.IMAGE in batchdata:
            output = list(super()._iteration(engine, batchdata))
            batch = list(engine.state.batch)
        else:  # every item of this batch failed to load: nothing for the network
            output, batch = [], []
        engine.state.batch = batch + failed
        return output + [{ERROR_KEY: item[ERROR_KEY]} for item in failed]
