"""The process group of a ``torchrun`` run, for training and batch inference alike: the backend and device of this
process (NCCL with one GPU per process, gloo on CPU-only machines), its rank, and running one step on rank 0 before
the others (:func:`on_rank_zero_first`). Without ``torchrun`` every helper answers for a single process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = [
    "default_backend",
    "destroy_distributed",
    "distributed_device",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "local_device",
    "on_rank_zero_first",
]

logger = logging.getLogger(__name__)


def default_backend() -> str:
    """``"nccl"`` when CUDA GPUs are visible, ``"gloo"`` otherwise (CPU-only machines, CI)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when GPUs are visible (torchrun sets ``LOCAL_RANK``), else CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group torchrun set up (``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE`` from the
    environment), once; bind the process to its GPU when there is one.

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``None`` for :func:`default_backend`.

    Returns:
        ``True`` (so that a config expression can chain it).

    Raises:
        RuntimeError: not launched by torchrun (no ``WORLD_SIZE``/``RANK`` in the environment), with the command to use.
    """
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "configs/multi_gpu_*.json must be launched by torchrun, e.g. `torchrun --nproc_per_node=2 -m monai.bundle "
            "run training --config_file \"['configs/train.json','configs/multi_gpu_train.json']\"`; for one process "
            "use configs/train.json alone."
        )
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend or default_backend())
    logger.info(
        "rank %d of %d joined the %s process group on %s",
        dist.get_rank(),
        dist.get_world_size(),
        dist.get_backend(),
        device,
    )
    return True


def distributed_device(backend: str | None = None) -> torch.device:
    """Join torchrun's process group (:func:`init_distributed`) and return this process's device
    (:func:`local_device`): the ``device`` of the ``multi_gpu_*.json`` configs, which the ``initialize`` steps resolve
    before anything that needs the group (the samplers, the rank-0-first datalist)."""
    init_distributed(backend)
    return local_device()


def destroy_distributed() -> None:
    """Leave the process group cleanly (the ``finalize`` step), so torchrun sees every rank exit normally."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears down while another still communicates
        dist.destroy_process_group()


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def on_rank_zero_first(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` on rank 0 first, then on the other ranks, which wait for it at a barrier.

    For steps that write shared files (generating the synthetic default set, writing the datalist): the other ranks
    then read finished files instead of racing rank 0. Outside a process group it simply calls ``function``.
    """
    distributed = dist.is_available() and dist.is_initialized()
    if distributed and dist.get_rank() > 0:
        dist.barrier()
    result = function(*args, **kwargs)
    if distributed and dist.get_rank() == 0:
        dist.barrier()
    return result
