"""Image-loading and label transforms for chest radiographs that MONAI does not provide as such."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import MapTransform, Resize
from PIL import Image

from .flags import is_on
from .input_errors import NotARadiograph

__all__ = [
    "to_grey",
    "grey_png_reader",
    "ResizeToMatchd",
    "RejectBlankImaged",
    "above_minimum",
    "padding_crop_selector",
]

# PIL modes that already hold one grey value per pixel and are kept as they are (8, 16 and 32 bit)
_GREY_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def to_grey(image: Image.Image) -> Image.Image:
    """Return a single-channel grey image from any PIL image a radiograph PNG/JPEG may be stored as.

    * palette (``P``/``PA``) images go through their palette: the Kaggle Shenzhen PNGs store grey levels as palette
      indices, and reading the raw indices gives many images in reversed grey scale;
    * RGB/RGBA/LA images (grey radiographs saved with R=G=B) become grey with ITU-R 601 luma, which returns the
      common value exactly when the channels are equal;
    * 1-bit images become 0/255; 8-bit, 16-bit and 32-bit grey images are returned unchanged (full bit depth kept).

    Used as the ``converter`` of MONAI's ``PILReader``.
    """
    if image.mode in _GREY_MODES:
        return image
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.convert("L")


def grey_png_reader() -> PILReader:
    """MONAI ``PILReader`` for PNG/JPEG/BMP radiographs and masks that always yields one grey channel."""
    return PILReader(converter=to_grey)


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
    """Raise :class:`~scripts.input_errors.NotARadiograph` for an image whose pixels all have one value.

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

    The switch is read with :func:`scripts.flags.is_on`, so ``--crop_padding false`` on the command line turns it off.
    """
    return above_minimum if is_on(crop_padding) else every_pixel
