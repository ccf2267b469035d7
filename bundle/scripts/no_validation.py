"""Writing ``model.pt`` when a training run has no validation data.

``train.json`` writes ``model.pt`` from the validation ``CheckpointSaver`` each time the key metric improves. A run
whose validation list is empty (MONAI Label's ``val_split`` 0, or too few labelled images to split any off) never
computes that metric, because MONAI's evaluator skips an empty loader, so no ``model.pt`` would be written and the next
inference would keep using the old weights, or find none. :class:`SaveModelWithoutValidation` fills that gap and does
nothing when there is validation data.
"""

from __future__ import annotations

import os

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

__all__ = ["SaveModelWithoutValidation"]


class SaveModelWithoutValidation:
    """Save the network's weights as ``model.pt`` after every epoch, but only when the evaluator has no data.

    With no validation there is no "best" model, so the latest one is the model: the file is rewritten after each
    epoch, in the same format as the best-metric saver's (a plain ``state_dict``, unwrapped from DDP), atomically
    (written beside the target and moved onto it), and only on rank 0.

    Args:
        evaluator: the validation engine (``@validate#evaluator``); its ``data_loader`` decides whether to save.
        network: the network whose weights are saved (``@network``, plain or DDP-wrapped).
        save_dir: folder of ``model.pt`` (``@ckpt_dir``, created).
        filename: the file name, ``model.pt`` as MONAI Label and ``inference.json`` expect.
    """

    def __init__(self, evaluator: Engine, network: torch.nn.Module, save_dir: str, filename: str = "model.pt") -> None:
        self.evaluator = evaluator
        self.network = network
        self.save_dir = save_dir
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        """Run after every training epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def has_validation_data(self) -> bool:
        """Whether the evaluator has anything to validate on (and so its own saver writes ``model.pt``)."""
        loader = getattr(self.evaluator, "data_loader", None)
        try:
            return loader is not None and len(loader) > 0
        except TypeError:  # an iterable without a length: assume it has data, as the evaluator will run it
            return True

    def __call__(self, engine: Engine) -> None:
        if self.has_validation_data() or idist.get_rank() != 0:
            return
        network = self.network.module if hasattr(self.network, "module") else self.network
        os.makedirs(self.save_dir, exist_ok=True)
        path = os.path.join(self.save_dir, self.filename)
        partial = os.path.join(self.save_dir, f".{self.filename}.partial-{os.getpid()}")
        try:
            torch.save(network.state_dict(), partial)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        engine.logger.info(f"no validation data: saved the epoch {engine.state.epoch} model to {path}")
