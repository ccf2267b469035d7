"""Image and label transforms for chest radiographs that MONAI does not provide as such: a mask resampled onto its
image's grid, blank images refused, and the selector with which MONAI's ``CropForegroundd`` crops the padding around
a radiograph."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize

from ..io.errors import NotARadiograph
from ..settings import is_on

__all__ = ["ResizeToMatchd", "RejectBlankImaged", "above_minimum", "every_pixel", "padding_crop_selector"]


class ResizeToMatchd(MapTransform):
    """Resize ``keys`` onto the spatial grid of ``ref_key`` when their spatial sizes differ.

    Lung masks are not always stored at their image's size (the Kaggle Shenzhen masks are at the scanner's original
    resolution, e.g. 2698x2988, while the images were rescaled to 1000x1000); both cover the same field of view, so the
    mask is resampled with nearest-neighbour onto the image grid. Inputs are channel-first.

    Args:
        keys: keys of the items to resize (usually ``"label"``).
        ref_key: key of the item whose spatial size is the target (usually ``"image"``).
        mode: interpolation mode, ``"nearest-exact"`` by default so labels stay labels.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        mode: str = "nearest-exact",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        target = tuple(d[self.ref_key].shape[1:])
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != target:
                d[key] = Resize(spatial_size=target, mode=self.mode)(d[key])
        return d


class RejectBlankImaged(MapTransform):
    """Raise :class:`~scripts.io.errors.NotARadiograph` for an image whose pixels all have one value.

    A blank image (all black or all white: a failed export, a placeholder, a corrupt frame) has nothing to segment;
    in batch inference its row becomes ``skipped`` with the reason instead of an arbitrary "mask". Labels are not
    checked (an empty mask is a valid label).

    Args:
        keys: keys of the images to check (usually ``"image"``).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            low, high = torch.aminmax(torch.as_tensor(d[key]))
            if bool(low == high):
                raise NotARadiograph(f"blank image: every pixel has the value {float(low):g}")
        return d


def above_minimum(image: torch.Tensor) -> torch.Tensor:
    """The pixels of ``image`` above its minimum, or all of them when it is constant (``CropForegroundd``'s selector).

    Radiographs are often stored on a larger canvas padded with the minimum value (the Montgomery PNGs carry a black
    band of up to 28% of their height below the patient; collimated or shuttered DICOM images may too). Cropping
    to the bounding box of the pixels above the minimum removes only rows and columns that are padding from edge to
    edge, so the chest fills the network's input the same way whatever canvas it came on. A constant (blank) image
    keeps its full size instead of cropping to nothing, so it still reaches the network and the run report.
    """
    content = image > image.min()
    return content if bool(content.any()) else torch.ones_like(content)


def every_pixel(image: torch.Tensor) -> torch.Tensor:
    """All pixels of ``image``: a ``select_fn`` with which ``CropForegroundd`` keeps the image whole."""
    return torch.ones_like(image, dtype=torch.bool)


def padding_crop_selector(crop_padding: bool | str | int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``CropForegroundd``'s ``select_fn`` for a config's ``crop_padding`` switch.

    The switch is read with :func:`scripts.settings.is_on`, so ``--crop_padding false`` on the command line turns it
    off.
    """
    return above_minimum if is_on(crop_padding) else every_pixel
