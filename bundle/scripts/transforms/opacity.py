"""Simulated lung opacities: a training augmentation that teaches the network the lung field's shape, not its darkness.

Lung masks in the Kaggle sets (and in clinical use) cover the anatomical lung field, including regions that
consolidation, effusion or collapse make as dense as soft tissue. A network trained on a few dozen mostly clear lungs
learns "dark means lung" and cuts those regions out; on the real sample that was the cause of every case below
0.90 Dice. This transform paints smooth, soft-tissue-dense opacities into the lung field of a training image while
leaving the label as it is, so the network has to find the lung border from the surrounding anatomy.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from torch.nn import functional

__all__ = ["RandLungOpacityd"]


class RandLungOpacityd(RandomizableTransform, MapTransform):
    """Blend a random smooth opacity into the lung field of ``keys`` (images), leaving ``label_key`` unchanged.

    The opacity is a smooth random field (low-resolution noise, upsampled) plus a random bias towards the lung bases
    (where effusions collect), thresholded so that it covers a random fraction of the lung, with soft edges. Inside it
    the image moves towards a soft-tissue grey level, taken as a high percentile of the pixels outside the lungs
    (mediastinum, diaphragm, abdomen), so that the opacity merges with the chest wall and diaphragm as real ones do.
    Only brightening is applied: an opacity is never darker than the lung it covers.

    Args:
        keys: image keys (channel-first in MONAI's (x, y) layout, as the bundle's readers give, intensities in [0, 1]).
        label_key: the lung mask (channel-first, > 0 inside the lungs), used only to place the opacity.
        prob: probability of adding an opacity to an image.
        coverage: range of the fraction of the lung field the opacity covers.
        strength: range of how far (0 = not at all, 1 = fully) pixels inside the opacity move to the tissue level.
        tissue_percentile: range of the percentile of the non-lung pixels used as the soft-tissue grey level.
        max_basal_bias: largest weight of the bias towards the lung bases (0 = opacities anywhere).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.3,
        coverage: tuple[float, float] = (0.1, 0.6),
        strength: tuple[float, float] = (0.5, 1.0),
        tissue_percentile: tuple[float, float] = (75.0, 95.0),
        max_basal_bias: float = 2.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.coverage = coverage
        self.strength = strength
        self.tissue_percentile = tissue_percentile
        self.max_basal_bias = max_basal_bias

    def _opacity_weight(self, lung: torch.Tensor) -> torch.Tensor | None:
        """A weight in [0, 1] on the lung's (x, y) grid: where, and how much, the opacity covers the lung field."""
        size_x, size_y = lung.shape
        if lung.sum() < 16:  # no lung to cover (a blank or unlabelled image)
            return None
        grid = int(self.R.randint(3, 9))
        noise = torch.as_tensor(self.R.standard_normal((1, 1, grid, grid)), dtype=torch.float32)
        field = functional.interpolate(noise, size=(size_x, size_y), mode="bicubic", align_corners=False)[0, 0]
        field = (field - field.mean()) / (field.std() + 1e-6)
        # MONAI's 2D layout is (x, y): y runs down the image, from -1 at the top to +1 at the bottom (the lung bases)
        down = torch.linspace(-1.0, 1.0, size_y).unsqueeze(0)
        field = field + self.R.uniform(0.0, self.max_basal_bias) * down
        inside = field[lung]
        threshold = torch.quantile(inside, 1.0 - self.R.uniform(*self.coverage))
        softness = 0.15 * (inside.std() + 1e-6)
        weight = torch.sigmoid((field - threshold) / softness)
        # soften the lung mask's edge so the opacity does not draw the label's outline into the image
        soft_lung = functional.avg_pool2d(lung[None, None].float(), kernel_size=5, stride=1, padding=2)[0, 0]
        return weight * soft_lung

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        lung = torch.as_tensor(d[self.label_key])[0] > 0
        weight = self._opacity_weight(lung)
        if weight is None:
            return d
        strength = float(self.R.uniform(*self.strength))
        percentile = float(self.R.uniform(*self.tissue_percentile)) / 100.0
        for key in self.key_iterator(d):
            image = d[key]
            pixels = torch.as_tensor(image)
            outside = pixels[:, ~lung]
            if outside.numel() == 0:
                continue
            level = torch.quantile(outside.float().flatten()[:: max(1, outside.numel() // 65536)], percentile)
            lift = (level - pixels).clamp_min(0.0) * (strength * weight).to(pixels.dtype)
            d[key] = image + lift
        return d
