"""Finding the checkpoint a resumed training run continues from."""

from __future__ import annotations

import glob
import os

__all__ = ["latest_checkpoint"]


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
