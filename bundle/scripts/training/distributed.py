"""Helpers that let ``multi_gpu_train.json`` / ``multi_gpu_evaluate.json`` run unchanged under ``torchrun`` on GPUs
(NCCL, one GPU per process) and on CPU-only machines (gloo, one process per CPU share).

The configs compose these with MONAI's own pieces (``monai.data.DistributedSampler``, the engines, the metric
handlers that all-gather across ranks); this module only adds what the configs cannot say in one expression:
deciding which handlers a rank attaches and which ranks log, the buffers every rank validates with, and a debugging
handler that records which files every rank's batches held. The process group itself (backend, device, rank, one
step on rank 0 first) is :mod:`scripts.process_group`, which batch inference uses too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import monai.data
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers.base_logger import BaseLogger
from monai.handlers import (
    CheckpointSaver,
    ClearMLHandler,
    LogfileHandler,
    MLFlowHandler,
    StatsHandler,
    TensorBoardHandler,
)
from torch.utils.data.distributed import DistributedSampler

from ..process_group import get_rank, get_world_size
from ..settings import is_on
from .curves import TrainingCurves

__all__ = [
    "RANK_ZERO_ONLY_HANDLERS",
    "BroadcastBuffers",
    "RankSampleRecorder",
    "distributed_network",
    "handlers_for_rank",
    "log_on_rank_zero",
    "validation_sampler",
]

logger = logging.getLogger(__name__)

# Handlers that only report or save: on ranks other than 0 they would duplicate logs, progress bars, TensorBoard event
# files and checkpoints. Every other handler runs on every rank: validation and the metric/file savers communicate
# across ranks (rank 0 would wait forever without them), and loaders, LR schedules and early stopping change the
# model or the run, which must stay identical on all ranks.
RANK_ZERO_ONLY_HANDLERS: tuple[type, ...] = (
    StatsHandler,
    TensorBoardHandler,
    CheckpointSaver,
    LogfileHandler,
    MLFlowHandler,
    ClearMLHandler,
    BaseLogger,  # ignite's loggers, e.g. ProgressBar
    TrainingCurves,
)


def distributed_network(network: torch.nn.Module, device: torch.device, channels_last: bool | str = True):
    """``network`` on ``device`` in DDP. Its memory format is set first (a config's switch, read with
    :func:`scripts.settings.is_on`): DDP lays out its gradient buckets by the parameters' strides when it wraps them,
    and a format changed afterwards would make every step copy the gradients."""
    memory_format = torch.channels_last if is_on(channels_last) else torch.contiguous_format
    module = network.to(device, memory_format=memory_format)
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def validation_sampler(dataset) -> monai.data.DistributedSampler:
    """Each rank validates its own share of ``dataset`` in order; the shares are padded to equal length only when
    there are fewer cases than ranks (a rank with nothing to validate would wait forever for the others' metric)."""
    return monai.data.DistributedSampler(dataset, even_divisible=len(dataset) < get_world_size(), shuffle=False)


def log_on_rank_zero(engines: Sequence[Engine]) -> None:
    """Let only rank 0's engines log at INFO: the other ranks report warnings and errors only."""
    for engine in engines:
        engine.logger.setLevel(logging.WARNING if get_rank() > 0 else logging.INFO)


def handlers_for_rank(
    handlers: Sequence[Any] | None,
    rank_zero_only: Sequence[type] = RANK_ZERO_ONLY_HANDLERS,
    exclude: Sequence[type] = (),
) -> list:
    """The handlers this rank attaches: all of them on rank 0; on the other ranks all but the reporting/saving ones.

    Selecting by type rather than by list position keeps this right when handlers are added to or reordered in
    the configs; a handler type not listed runs on every rank, which is the safe default for anything that
    changes the model or takes part in collective communication.

    Args:
        handlers: the workflow's handler list (``None`` gives an empty list).
        rank_zero_only: handler types attached on rank 0 only (default :data:`RANK_ZERO_ONLY_HANDLERS`).
        exclude: handler types attached on no rank, for handlers that are wrong under DDP (e.g. ones that report
            per-case results from the local shard only).
    """
    handlers = [h for h in handlers or [] if not isinstance(h, tuple(exclude))]
    if get_rank() == 0:
        return handlers
    return [h for h in handlers if not isinstance(h, tuple(rank_zero_only))]


class BroadcastBuffers:
    """Copy rank 0's module buffers (BatchNorm running statistics) to every rank when an engine starts.

    DDP keeps parameters identical across ranks and broadcasts buffers at the start of each *training* forward,
    so after the last training iteration every rank holds running statistics updated by its own last batch. The
    validation run (no gradients, so DDP syncs nothing) would then score rank 1's share of the data with a slightly
    different model from the one rank 0 saves. Attached to the evaluator, this makes all ranks validate
    exactly the model that is saved.

    Args:
        module: the validated network (plain or DDP-wrapped; with a weight average, the averaged copy).
        src: the rank whose buffers win (0: the rank that saves).
    """

    def __init__(self, module: torch.nn.Module, src: int = 0) -> None:
        self.module = module
        self.src = src

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in self.module.buffers():
                dist.broadcast(buffer.data, src=self.src)


class RankSampleRecorder:
    """Debugging handler: record, for every iteration, which data items the batch on this rank held.

    Under DDP each rank's ``DataLoader`` draws index batches from its ``DistributedSampler`` (MONAI re-seeds it with
    the epoch at every ``EPOCH_STARTED``); this handler walks the same ``batch_sampler`` in step with the engine and
    writes one JSON line per iteration to ``<output_dir>/rank_samples/rank<R>.jsonl``::

        {"rank": 1, "epoch": 2, "iteration": 7, "batch_size": 4, "items": ["/data/images/a.png", ...]}

    It checks every entry against the batch the engine really got (its size), so a loader that does not use the
    sampler shows up as an error. Use it to check that ranks see disjoint parts of the data, or to find which files
    were in a batch that produced a NaN loss. Turn it on with ``--record_rank_samples true``.

    Only samplers that give the same order when iterated twice are supported (``DistributedSampler``,
    ``SequentialSampler``); with ``RandomSampler`` (single process, ``shuffle=True``) a second iteration would draw
    a different order and consume the global random state, so nothing is recorded and a warning says so.

    Args:
        output_dir: folder for ``rank_samples/rank<R>.jsonl`` (created on the first write).
        item_key: key of the data items named in the record (the datalist's ``"image"`` path).
        batch_key: key of the batch tensor whose first dimension is the batch size (when the engine does not
            decollate the batch).
        enabled: record (``--record_rank_samples true``, read with :func:`scripts.settings.is_on`) or attach
            nothing.
    """

    def __init__(
        self, output_dir: str, item_key: str = "image", batch_key: str = "image", enabled: bool | str = True
    ) -> None:
        self.output_dir = output_dir
        self.item_key = item_key
        self.batch_key = batch_key
        self._batches = None
        self._enabled = is_on(enabled)

    @property
    def filename(self) -> str:
        return os.path.join(self.output_dir, "rank_samples", f"rank{get_rank()}.jsonl")

    def attach(self, engine: Engine) -> None:
        if not self._enabled:
            return
        loader = engine.data_loader
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, (DistributedSampler, torch.utils.data.SequentialSampler)):
            self._enabled = False
            logger.warning(
                "RankSampleRecorder: the loader's sampler is %s, whose order cannot be replayed; nothing "
                "is recorded.",
                type(sampler).__name__,
            )
            return
        os.makedirs(os.path.dirname(self.filename), exist_ok=True)
        open(self.filename, "w").close()  # one record per run
        # registered after the engine's own EPOCH_STARTED handler that calls sampler.set_epoch(epoch)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._batches = iter(engine.data_loader.batch_sampler)

    def iteration_completed(self, engine: Engine) -> None:
        if not self._enabled or self._batches is None:
            return
        indices = next(self._batches)
        batch = engine.state.batch  # MONAI engines decollate it into a list of items at ITERATION_COMPLETED
        batch_size = len(batch) if isinstance(batch, list) else int(batch[self.batch_key].shape[0])
        if len(indices) != batch_size:
            raise RuntimeError(
                f"RankSampleRecorder: the sampler gave {len(indices)} items for iteration {engine.state.iteration} "
                f"but the batch holds {batch_size}; the loader does not draw from the sampler it was given."
            )
        data = engine.data_loader.dataset.data
        record = {
            "rank": get_rank(),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "batch_size": batch_size,
            "items": [str(data[i][self.item_key]) if isinstance(data[i], dict) else str(data[i]) for i in indices],
        }
        with open(self.filename, "a") as f:
            f.write(json.dumps(record) + "\n")
