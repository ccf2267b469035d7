"""Finding the checkpoint a resumed training run continues from."""

from __future__ import annotations

import glob
import os
import re

__all__ = ["latest_checkpoint"]


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> str:
    """Return the path of the highest-epoch checkpoint written by the training's interval ``CheckpointSaver``.

    Raises:
        FileNotFoundError: no checkpoint to resume from, with what to do instead.
    """
    def epoch(path: str) -> int:
        match = re.search(r"epoch=(\d+)", os.path.basename(path))
        return int(match.group(1)) if match else -1

    found = sorted(glob.glob(os.path.join(ckpt_dir, pattern)), key=epoch)
    if not found:
        raise FileNotFoundError(
            f"--resume true was given but {ckpt_dir} holds no '{pattern}' checkpoint to resume from; "
            "train without --resume first (a checkpoint is written after every epoch)."
        )
    return found[-1]
