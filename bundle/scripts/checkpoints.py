"""Finding the checkpoint a resumed training run continues from, and loading weights for inference and evaluation."""

from __future__ import annotations

import glob
import os

from .fault_tolerance import RunFault
from .input_errors import describe_error

__all__ = ["latest_checkpoint", "load_weights"]


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> str:
    """Return the most recently written checkpoint of the training's interval ``CheckpointSaver``.

    The newest file, not the highest epoch number: a fresh run in a folder that still holds an older run's
    ``checkpoint_epoch=10.pt`` must resume from its own ``checkpoint_epoch=3.pt``.

    Raises:
        FileNotFoundError: no checkpoint to resume from, with what to do instead.
    """
    found = sorted(glob.glob(os.path.join(ckpt_dir, pattern)), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(
            f"--resume True was given but {ckpt_dir} holds no '{pattern}' checkpoint to resume from; "
            "train without --resume first (a checkpoint is written after every epoch)."
        )
    return found[-1]


def load_weights(loader, engine) -> None:
    """Load the weights with MONAI's ``CheckpointLoader`` (``loader(engine)``), as a fault of the run when they are
    missing or do not fit the network: a :class:`~scripts.fault_tolerance.RunFault` that says what to do (exit
    status 1), not a traceback.

    Args:
        loader: a ``monai.handlers.CheckpointLoader``; ``None`` for a network that carries its weights (an exported
            TorchScript model, ``configs/inference_exported.json``).
        engine: the engine whose network receives the weights.
    """
    if loader is None:
        return
    path = str(loader.load_path)
    if not os.path.isfile(path):
        raise RunFault(
            f"no weights at {path}: train the model first (python -m monai.bundle run training --config_file "
            "configs/train.json) or pass --ckpt_path /path/to/model.pt"
        )
    try:
        loader(engine)
    except Exception as exc:
        raise RunFault(
            f"the weights in {path} cannot be loaded into the network ({describe_error(exc)}); check that they were "
            "trained with this bundle's network_def and num_classes"
        ) from exc
