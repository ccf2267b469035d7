"""Progressive resizing: the first epochs of a run train on smaller images, the rest at the final ``image_size``.

Early in training the network learns the coarse layout (where the chest, the mediastinum and the diaphragm are), which
a small image shows as well as a large one; the boundary detail comes later. A training step at 96x96 costs 0.74x one
at 128x128 on the development CPU (a fixed part of every step, the weight updates and casts, does not shrink with the
image), so the early epochs come cheaper. The batches are resized where the trainer gets them, after the cached
pre-processing and the random augmentation, so the cache and the data loader workers stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from ..settings import image_size_setting

__all__ = ["ProgressiveResizing"]


class ProgressiveResizing:
    """Resize every training batch to ``early_size`` during the first ``early_fraction`` of the epochs.

    Args:
        early_size: the spatial size of the early epochs' images and labels: one number (a square) or two, read as
            ``image_size`` is (:func:`scripts.settings.image_size_setting`).
        early_fraction: the fraction of ``max_epochs`` trained at ``early_size`` (rounded to whole epochs); 0: off.
        image_key: the batch key of the images, resized with area averaging.
        label_key: the batch key of the labels, resized with nearest-neighbour sampling (labels stay 0/1).
    """

    def __init__(
        self,
        early_size: int | str | Sequence[int],
        early_fraction: float = 0.0,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if not 0.0 <= float(early_fraction) < 1.0:
            raise ValueError(f"early_fraction must be in [0, 1); got {early_fraction!r}.")
        self.early_size = tuple(image_size_setting(early_size))
        self.early_fraction = float(early_fraction)
        self.image_key = image_key
        self.label_key = label_key

    def last_early_epoch(self, max_epochs: int) -> int:
        return round(self.early_fraction * max_epochs)

    def attach(self, engine: Engine) -> None:
        if self.early_fraction > 0:
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch > self.last_early_epoch(engine.state.max_epochs):
            return
        batch = engine.state.batch
        image, label = batch[self.image_key], batch[self.label_key]
        if tuple(image.shape[2:]) == self.early_size:
            return
        # a new batch in engine.state.batch, ignite's documented way to preprocess a batch (the loader's is untouched)
        engine.state.batch = {
            **batch,
            self.image_key: F.interpolate(_plain(image), size=self.early_size, mode="area"),
            self.label_key: F.interpolate(_plain(label), size=self.early_size, mode="nearest-exact"),
        }


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
