"""Post-processing of lung masks that MONAI lacks, as MONAI map transforms (geometry: :mod:`scripts.lungs`).

The bundle's post-processing chain (``configs/inference.json``) is MONAI's ``Activationsd`` (softmax), ``Invertd``
(back to the input's grid) and ``AsDiscreted`` (threshold), plus these:

* :class:`InverseInterpolationd`: makes ``Invertd`` undo the ``Resized`` with bilinear interpolation of the
  probabilities instead of the resize's own "area" mode, which upsamples as nearest-neighbour and gives the mask
  staircase edges 10 pixels high on a 2500-pixel radiograph;
* :class:`KeepLungComponentsd`: MONAI's ``KeepLargestConnectedComponentd`` (the two largest components), the removal
  of components smaller than a fraction of the largest one (a second "lung" of a few pixels is noise, not a lung) and
  MONAI's ``FillHolesd``, with the same pixels, in one step over the mask's bounding box (several times faster on
  full-size radiographs);
* :class:`KeepLungProbabilityd`: the same lungs decided on the network's grid, before the probabilities are brought
  back to the input's grid: the full-size mask then needs no labelling at all;
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

from ..lung_shape import SHAPE_MODEL_FILE, LungShapeModel
from ..lungs import keep_lung_components, patient_right_on_image_left, split_lung_sides
from ..quality import lung_quality_score
from ..settings import is_on

__all__ = ["InverseInterpolationd", "KeepLungComponentsd", "KeepLungProbabilityd", "LabelLungSidesd", "LungShapeScored"]


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


class KeepLungComponentsd(MapTransform):
    """Keep the lungs of a thresholded mask: MONAI's ``KeepLargestConnectedComponentd(applied_labels=[1])``, then the
    removal of components smaller than a fraction of the largest, then MONAI's ``FillHolesd``, in one step.

    The pixels are those of the three steps (:func:`scripts.lungs.keep_lung_components`); one labelling of the mask and
    one of its background, inside the mask's bounding box, replace MONAI's labelling of the whole image and its hole
    filling by repeated dilation from the border: on a full-size radiograph, 2-3 times faster than MONAI's two
    transforms alone.

    Args:
        keys: keys of channel-first binary masks (``(1, x, y)``; every non-zero value is foreground).
        num_components: components to keep, the largest first.
        min_fraction: components with fewer pixels than this fraction of the largest one are removed (0: none).
        fill_holes: fill the background regions the kept components enclose.
        connectivity: pixel connectivity (1: 4-neighbours; 2 or ``None``: 8-neighbours, MONAI's default).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_components: int = 2,
        min_fraction: float = 0.0,
        fill_holes: bool = True,
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_components) < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}.")
        if not 0 <= min_fraction <= 1:
            raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}.")
        self.num_components = int(num_components)
        self.min_fraction = min_fraction
        self.fill_holes = fill_holes
        self.connectivity = connectivity

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_numpy(img) > 0
            lungs = np.stack(
                [
                    keep_lung_components(
                        channel, self.num_components, self.min_fraction, self.fill_holes, self.connectivity
                    )
                    for channel in arr
                ]
            )
            d[key] = convert_to_dst_type(lungs, dst=img, dtype=img.dtype)[0]
        return d


class KeepLungProbabilityd(MapTransform):
    """Keep the lungs in a lung probability map on the network's grid: the components and holes of
    :class:`KeepLungComponentsd`, decided where the map is at least ``threshold``, then written into the map itself
    (removed components' probabilities set to 0, enclosed holes to 1).

    Why on the grid: the full-size mask is the bilinear upsampling of this map, thresholded, and a bilinear value is
    a weighted mean of the four grid values around it, so it can only reach the threshold next to a grid value that
    does. A component removed here leaves nothing at full size, a hole filled here none either, and labelling the
    network's 128x128 grid costs a fraction of labelling a 2000x2500 mask. The full-size mask differs from the one
    :class:`KeepLungComponentsd` keeps after the upsampling only where a link between two grid points is diagonal
    (the two grids may disagree whether it connects): a few boundary pixels (Dice >= 0.999 on the real sample).

    Args:
        keys: keys of channel-first probability maps (``(1, x, y)``, the lung class).
        threshold: the probability from which a pixel is lung (``AsDiscreted``'s threshold that follows).
        num_components: components to keep, the largest first.
        min_fraction: components with fewer grid points than this fraction of the largest one are removed (0: none).
        fill_holes: fill the background regions the kept components enclose.
        connectivity: pixel connectivity (1: 4-neighbours; 2 or ``None``: 8-neighbours, MONAI's default).
        score_key: also record the mask quality score (:func:`scripts.quality.lung_quality_score` of the probability
            and the kept lungs) under this item key (``None``: no score).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        num_components: int = 2,
        min_fraction: float = 0.0,
        fill_holes: bool = True,
        connectivity: int | None = None,
        score_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold
        self.score_key = score_key
        self.keep = KeepLungComponentsd(
            keys, num_components, min_fraction, fill_holes, connectivity, allow_missing_keys
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            probability = d[key]
            lung = probability >= self.threshold
            kept = self.keep({key: lung})[key].bool()
            if self.score_key is not None:  # from the probability as the network gave it, before it is cleaned
                d[self.score_key] = lung_quality_score(convert_to_numpy(probability)[0], convert_to_numpy(kept)[0])
            cleaned = torch.where(kept & ~lung, 1.0, torch.where(lung & ~kept, 0.0, probability))
            d[key] = convert_to_dst_type(cleaned, dst=probability, dtype=probability.dtype)[0]
        return d


class LungShapeScored(MapTransform):
    """Record what the lungs kept on the network's grid say of the input (:meth:`scripts.lung_shape.LungShapeModel.
    judge`): their distance from the lungs of frontal chests under ``score_key``, and the verdict and its evidence in
    words under ``score_key + "_verdict"`` and ``score_key + "_evidence"``; the image evidence of whether the input is
    a frontal chest radiograph at all.

    Args:
        keys: keys of channel-first lung probability maps on the network's grid (after :class:`KeepLungProbabilityd`).
        threshold: the probability from which a pixel is lung.
        score_key: the item key of the distance.
        model: the shape model file (default: the bundle's ``models/lung_shape.npz``).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        score_key: str = "lung_shape",
        model: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold
        self.score_key = score_key
        path = model or SHAPE_MODEL_FILE
        try:
            self.model = LungShapeModel.load(path)
        except OSError as exc:
            raise FileNotFoundError(
                f"the lung shape model {path} cannot be read ({exc}): it comes with the bundle (models/); "
                "benchmarks/frontal_chest_check.py --fit makes it anew"
            ) from exc

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            verdict, distance, evidence = self.model.judge(convert_to_numpy(d[key])[0] >= self.threshold)
            d[self.score_key] = round(distance, 3) if np.isfinite(distance) else None
            d[self.score_key + "_verdict"], d[self.score_key + "_evidence"] = verdict, evidence
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
        enabled: label the sides (a config's ``label_sides`` switch, read with :func:`scripts.settings.is_on`); off,
            the mask passes through as 0/1.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        right_label: int = 1,
        left_label: int = 2,
        orientation_key: str = "patient_orientation",
        enabled: bool | str = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = is_on(enabled)
        self.right_label, self.left_label = right_label, left_label
        self.orientation_key = orientation_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not self.enabled:
            return d
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
