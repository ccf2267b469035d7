"""The mask quality score as a MONAI map transform (the score itself: :mod:`scripts.quality`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from ..quality import lung_quality_score

__all__ = ["LungQualityScored"]


class LungQualityScored(MapTransform):
    """Add the item's mask quality score (:func:`scripts.quality.lung_quality_score`) under ``score_key``.

    Placed first among the mask transforms, where ``keys`` hold the lung probability on the network's grid
    (``(1, x, y)``); the item's value is a float in [0, 1], the model's estimate of the Dice of the mask the following
    transforms make. The probabilities are not changed.

    Args:
        keys: the lung probability map (usually ``"pred"``; one key).
        threshold: ``AsDiscreted``'s threshold that makes the mask.
        num_components: the components post-processing keeps.
        min_fraction: post-processing's relative size bound for components.
        score_key: the item key of the score.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        num_components: int = 2,
        min_fraction: float = 0.0,
        score_key: str = "qc_score",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold, self.num_components, self.min_fraction = threshold, num_components, min_fraction
        self.score_key = score_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            probability = convert_to_numpy(d[key])[0]
            d[self.score_key] = lung_quality_score(probability, self.threshold, self.num_components, self.min_fraction)
        return d
