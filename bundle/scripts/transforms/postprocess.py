"""Post-processing of lung masks that MONAI lacks, as MONAI map transforms (geometry: :mod:`scripts.lungs`).

The bundle's post-processing chain (``configs/inference.json``) is MONAI's ``Activationsd`` (softmax), ``Invertd``
(back to the input's grid), ``AsDiscreted`` (argmax), ``KeepLargestConnectedComponentd`` (two largest lung
components) and ``FillHolesd``, plus these:

* :class:`InverseInterpolationd`: makes ``Invertd`` undo the ``Resized`` with bilinear interpolation of the
  probabilities instead of the resize's own "area" mode, which upsamples as nearest-neighbour and gives the mask
  staircase edges 10 pixels high on a 2500-pixel radiograph;
* :class:`DropSmallComponentsd`: removes components smaller than a fraction of the largest one (a second "lung" of a
  few pixels is noise, not a lung);
* :class:`FillEnclosedHolesd`: MONAI's ``FillHolesd`` result for binary masks, computed with one labelling of the
  background inside the mask's bounding box instead of a dilation from the border repeated until it converges
  (several times faster on full-size radiographs, identical output);
* :class:`LabelLungSidesd`: labels the patient's right lung 1 and left lung 2 (optional).

Arrays are MONAI's ``(C, x, y)``: axis 1 runs along an image row (x = column), axis 2 down the image (y = row).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import convert_to_dst_type, convert_to_numpy

from ..lungs import fill_enclosed_holes, lung_components, patient_right_on_image_left, split_lung_sides

__all__ = ["InverseInterpolationd", "DropSmallComponentsd", "FillEnclosedHolesd", "LabelLungSidesd"]


class InverseInterpolationd(MapTransform):
    """Set the interpolation ``Invertd`` uses when it undoes the spatial transforms recorded on ``keys``.

    ``Invertd(nearest_interp=False)`` inverts a resize with the mode the resize used; this transform rewrites that mode
    (with MONAI's ``convert_applied_interp_mode``) on a copy of the item, so the inverse resize of class probabilities
    can be bilinear while the forward resize stays "area" as in training.

    Args:
        keys: keys whose recorded transforms ``Invertd`` will undo (its ``orig_keys``, usually ``"image"``).
        mode: interpolation mode for the inversion, e.g. ``"bilinear"``.
        align_corners: ``align_corners`` for the inversion (``None``: PyTorch's default).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "bilinear",
        align_corners: bool | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = mode
        self.align_corners = align_corners

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                item = d[key].clone()  # the batch holds the same tensor: leave its record untouched
                item.applied_operations = convert_applied_interp_mode(
                    d[key].applied_operations, mode=self.mode, align_corners=self.align_corners
                )
                d[key] = item
        return d


class DropSmallComponentsd(MapTransform):
    """Remove foreground components smaller than ``min_fraction`` of the largest component.

    Args:
        keys: keys of channel-first label maps (``(1, x, y)``; every non-zero value is foreground).
        min_fraction: components with fewer pixels than ``min_fraction`` times the largest one are set to 0.
        connectivity: pixel connectivity (1: 4-neighbours, 2 or ``None``: 8-neighbours, as MONAI's default).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_fraction: float = 0.1,
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 <= min_fraction <= 1:
            raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}.")
        self.min_fraction = min_fraction
        self.connectivity = connectivity

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.min_fraction == 0:  # nothing is smaller than 0 times the largest: skip the labelling
            return d
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_numpy(img)
            keep = np.zeros(arr.shape, bool)
            for c in range(arr.shape[0]):
                labels, sizes = lung_components(arr[c] > 0, self.connectivity)
                if sizes.max() > 0:
                    keep[c] = (sizes >= self.min_fraction * sizes.max())[labels] & (labels > 0)
            d[key] = img * convert_to_dst_type(keep, dst=img, dtype=img.dtype)[0]
        return d


class FillEnclosedHolesd(MapTransform):
    """Fill holes in binary masks: MONAI's ``FillHolesd(applied_labels=[1])`` output, several times faster.

    MONAI grows the background in from the border with a binary dilation repeated until nothing changes, which on a
    2500x2000 mask takes hundreds of passes; labelling the background once (:func:`fill_enclosed_holes`) gives the
    same pixels.

    Args:
        keys: keys of channel-first binary masks (``(1, x, y)``; every non-zero value is foreground).
        connectivity: background connectivity (1: 4-neighbours; 2 or ``None``: 8-neighbours, MONAI's default).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, connectivity: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.connectivity = connectivity

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_numpy(img) > 0
            filled = np.stack([fill_enclosed_holes(channel, self.connectivity) for channel in arr])
            d[key] = convert_to_dst_type(filled, dst=img, dtype=img.dtype)[0]
        return d


class LabelLungSidesd(MapTransform):
    """Turn a binary lung mask into right lung = ``right_label``, left lung = ``left_label`` (see
    :func:`split_lung_sides`).

    The side is taken from the item's ``patient_orientation`` meta data (DICOM Patient Orientation) when present,
    else the usual display is assumed: patient's right on the image's left.

    Args:
        keys: keys of ``(1, x, y)`` binary label maps with MONAI meta data.
        right_label: value of the patient's right lung.
        left_label: value of the patient's left lung.
        orientation_key: meta key holding the DICOM Patient Orientation string.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        right_label: int = 1,
        left_label: int = 2,
        orientation_key: str = "patient_orientation",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.right_label, self.left_label = right_label, left_label
        self.orientation_key = orientation_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = img.meta if isinstance(img, MetaTensor) else {}
            standard = patient_right_on_image_left(meta.get(self.orientation_key, ""))
            arr = convert_to_numpy(img)
            sides = split_lung_sides(arr[0], standard)
            out = np.zeros(arr.shape, np.float32)
            out[0][sides == 1] = self.right_label
            out[0][sides == 2] = self.left_label
            d[key] = convert_to_dst_type(out, dst=img, dtype=img.dtype)[0]
        return d
