"""Image and label transforms for chest radiographs that MONAI does not provide as such: a mask resampled onto its
image's grid, blank images refused, the selector with which MONAI's ``CropForegroundd`` crops the padding around a
radiograph, intensity scaling to [0, 1] done after the resize, the model's intensity normalisation, and the small
8-bit copy of the image on which batch inference draws its overlay."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import HistogramNormalize, MapTransform, Resize
from PIL import Image

from ..io.errors import NotARadiograph
from ..settings import intensity_setting, is_on

__all__ = [
    "ResizeToMatchd",
    "RejectBlankImaged",
    "ReviewImaged",
    "RecordIntensityRanged",
    "ScaleRecordedIntensityd",
    "NormaliseModelIntensityd",
    "review_pixels",
    "value_range",
    "above_minimum",
    "every_pixel",
    "padding_crop_selector",
]


class ResizeToMatchd(MapTransform):
    """Resize ``keys`` onto the spatial grid of ``ref_key`` when their spatial sizes differ.

    Lung masks are not always stored at their image's size (the Kaggle Shenzhen masks are at the scanner's original
    resolution, e.g. 2698x2988, while the images were rescaled to 1000x1000); both cover the same field of view, so the
    mask is resampled with nearest-neighbour onto the image grid. Inputs are channel-first.

    Args:
        keys: keys of the items to resize (usually ``"label"``).
        ref_key: key of the item whose spatial size is the target (usually ``"image"``).
        mode: interpolation mode, ``"nearest-exact"`` by default so labels stay labels.
        as_loaded: match the reference's grid as loaded (its meta data's ``spatial_shape``), not its current shape:
            the label is then on the input's own grid even after the image was cropped and resized for the network.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        mode: str = "nearest-exact",
        as_loaded: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.mode = mode
        self.as_loaded = as_loaded

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ref = d[self.ref_key]
        loaded = getattr(ref, "meta", {}).get("spatial_shape") if self.as_loaded else None
        target = tuple(int(n) for n in loaded) if loaded is not None else tuple(ref.shape[1:])
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != target:
                d[key] = Resize(spatial_size=target, mode=self.mode)(d[key])
        return d


def value_range(image: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """The minimum and maximum of an image's pixels; with NumPy for an image in CPU memory (a full-size radiograph in
    0.3 ms, 3-10 times faster than ``torch.aminmax`` on one thread)."""
    pixels = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    if pixels.device.type == "cpu" and pixels.dtype != torch.bfloat16:  # NumPy has no bfloat16
        pixels = pixels.numpy()
        return float(pixels.min()), float(pixels.max())
    low, high = torch.aminmax(pixels)
    return float(low), float(high)


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
            low, high = value_range(d[key])
            if low == high:
                raise NotARadiograph(f"blank image: every pixel has the value {float(low):g}")
        return d


class ReviewImaged(MapTransform):
    """Add a copy of an image for people to look at: grey levels 0-255, at most ``size`` pixels on its long side.

    Batch inference draws the lung contour on it (:func:`scripts.batch.writers.write_overlay`), so the full-size image
    never travels further than the data loader. The copy spans the image's own range (its minimum is 0 and its
    maximum 255, as ``ScaleIntensityd`` would scale it), is shrunk by area averaging (Pillow's box filter on 8 bits,
    several times faster than a float resize) and is never enlarged. It is a ``(1, x, y)`` uint8 tensor in MONAI's
    layout, its size its own: :func:`scripts.batch.fault_tolerance.collate_skipping_failures` batches such items as a
    list, and :func:`review_pixels` gives the ``(rows, columns)`` picture.

    Args:
        keys: keys of channel-first 2D images (usually ``"image"``, as loaded).
        names: the key of each copy (usually ``"overlay_image"``).
        size: the canvas side and the longest side of the picture, in pixels.
        enabled: make the copies (a config's ``write_overlay`` switch, read with :func:`scripts.settings.is_on`);
            off, the transform passes the item through, so a run without overlays decodes nothing for them.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        names: KeysCollection,
        size: int = 1024,
        enabled: bool | str = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = is_on(enabled)
        self.names = [names] if isinstance(names, str) else list(names)
        if len(self.names) != len(self.keys):
            raise ValueError(f"one name per key: got keys {self.keys} and names {self.names}")
        if int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not self.enabled:
            return d
        for key, name in zip(self.key_iterator(d), self.names, strict=True):
            grey = _grey_levels(np.asarray(torch.as_tensor(d[key])[0].detach().cpu()))
            width, height = grey.shape  # (x, y)
            scale = min(1.0, self.size / max(width, height))
            if scale < 1:
                shrunk = max(1, round(height * scale)), max(1, round(width * scale))  # (rows, columns)
                picture = Image.fromarray(np.ascontiguousarray(grey.T)).resize(shrunk[::-1], Image.BOX)
                grey = np.asarray(picture).T
            d[name] = torch.from_numpy(np.ascontiguousarray(grey))[None]
        return d


class RecordIntensityRanged(MapTransform):
    """Record the image's minimum and maximum in its meta data (``intensity_range``), for
    :class:`ScaleRecordedIntensityd` after a resize.

    MONAI's ``ScaleIntensityd`` before ``Resized`` makes several passes over the full-size image (4 ms on a 1024-pixel
    radiograph); scaling is linear, and so is ``Resized``'s ``area`` mode (an average), so scaling the resized image
    with the full image's range gives the same values (up to float rounding) from one pass (0.2 ms) and a small one.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key] if isinstance(d[key], MetaTensor) else MetaTensor(d[key])
            image.meta["intensity_range"] = value_range(image.as_tensor().float())  # no copy for a float32 image
            d[key] = image
        return d


class ScaleRecordedIntensityd(MapTransform):
    """Scale the image linearly from its recorded range (:class:`RecordIntensityRanged`) to ``[minv, maxv]``, as
    MONAI's ``ScaleIntensity`` scales from the image's own range (a constant image becomes ``minv``).

    Args:
        keys: the image keys.
        minv, maxv: the target range.
    """

    def __init__(self, keys: KeysCollection, minv: float = 0.0, maxv: float = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.minv, self.maxv = float(minv), float(maxv)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            low, high = image.meta.pop("intensity_range")
            if high == low:
                d[key] = image * self.minv
            else:
                d[key] = (image - low) / (high - low) * (self.maxv - self.minv) + self.minv
        return d


class NormaliseModelIntensityd(MapTransform):
    """Normalise an image already scaled to [0, 1] the way its model was trained (the model setting ``intensity``).

    * ``"range"``: left as it is, each image's grey range at [0, 1] (the models of bundle 0.10 and earlier).
    * ``"histogram"``: equalised with MONAI's ``HistogramNormalize`` (256 bins, back to [0, 1]). The grey level of
      the lungs differs between hospitals (their median at 0.60 of the range in Shenzhen's radiographs, 0.27 in
      Montgomery's); after equalisation a grey level says how much of the image is darker, which moves less between
      hospitals (0.34 and 0.27), and a model trained on one hospital transfers better to the other
      (benchmarks/README.md, "Screens").

    Args:
        keys: the image keys.
        intensity: ``"range"`` or ``"histogram"`` (:data:`scripts.settings.INTENSITY_NORMALISATIONS`), in any case.

    Raises:
        ValueError: another ``intensity``.
    """

    def __init__(self, keys: KeysCollection, intensity: str = "range", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.intensity = intensity_setting(intensity)
        self.equalise = HistogramNormalize(num_bins=256, min=0, max=1) if self.intensity == "histogram" else None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.equalise is not None:
            for key in self.key_iterator(d):
                d[key] = self.equalise(d[key])
        return d


def _grey_levels(image: np.ndarray) -> np.ndarray:
    """``image`` scaled from its minimum and maximum to 0-255, as uint8 (an 8-bit image spanning 0-255 as it is)."""
    low, high = image.min(), image.max()
    if image.dtype == np.uint8 and low == 0 and high == 255:
        return image
    scale = 255.0 / float(high - low) if high > low else 0.0
    # in place, skipping the steps that change nothing (an 8-bit image read as floats): 2-3 passes instead of 6;
    # (image - low) * scale lies in [0, 255] (a float rounding above 255 still rounds down to 255 below)
    scaled = image.astype(np.float32)
    if low != 0:
        scaled -= np.float32(low)
    if scale != 1:
        scaled *= np.float32(scale)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def review_pixels(review: torch.Tensor | np.ndarray) -> np.ndarray:
    """The ``(rows, columns)`` uint8 picture of a :class:`ReviewImaged` image (``(1, x, y)``)."""
    return np.asarray(review, np.uint8)[0].T


def above_minimum(image: torch.Tensor) -> torch.Tensor:
    """The pixels of ``image`` above its minimum, or all of them when it is constant (``CropForegroundd``'s selector).

    Radiographs are often stored on a larger canvas padded with the minimum value (the Montgomery PNGs carry a black
    band of up to 28% of their height below the patient; collimated or shuttered DICOM images may too). Cropping
    to the bounding box of the pixels above the minimum removes only rows and columns that are padding from edge to
    edge, so the chest fills the network's input the same way whatever canvas it came on. A constant (blank) image
    keeps its full size instead of cropping to nothing, so it still reaches the network and the run report.

    For an image in CPU memory the selection is a NumPy array: MONAI then finds its bounding box with NumPy, several
    times faster than with PyTorch's ``any`` over the axes of a full-size radiograph.
    """
    pixels = _cpu_array(image)
    content = pixels > pixels.min()
    return content if content.any() else _all_of(content)


def every_pixel(image: torch.Tensor) -> torch.Tensor:
    """All pixels of ``image``: a ``select_fn`` with which ``CropForegroundd`` keeps the image whole."""
    return _all_of(_cpu_array(image))


def _cpu_array(image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The pixels as a NumPy array (a view) when they are in CPU memory, else the tensor itself."""
    if isinstance(image, torch.Tensor):
        tensor = image.as_tensor() if isinstance(image, MetaTensor) else image
        return tensor.detach().numpy() if tensor.device.type == "cpu" else tensor
    return np.asarray(image)


def _all_of(array: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    if isinstance(array, torch.Tensor):
        return torch.ones_like(array, dtype=torch.bool)
    return np.ones(array.shape, bool)


def padding_crop_selector(crop_padding: bool | str | int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``CropForegroundd``'s ``select_fn`` for a config's ``crop_padding`` switch.

    The switch is read with :func:`scripts.settings.is_on`, so ``--crop_padding false`` on the command line turns it
    off.
    """
    return above_minimum if is_on(crop_padding) else every_pixel
