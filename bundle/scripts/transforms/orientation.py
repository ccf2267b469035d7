"""Frontal radiographs stored rotated or mirrored, turned upright for the network and the mask put back on the grid
the file stores.

DICOM's Patient Orientation (0020,0020) names the patient's direction along the image's rows (left to right) and down
its columns: a frontal chest shown as radiologists read it is ``L\\F`` (the patient's left on the image's right,
feet at the bottom), PA or AP alike. Detectors and archives also store them turned (``H\\L``, ``F\\R``: lying on a
side) or mirrored (``R\\F``). The network has only seen upright chests, and segments a turned one badly;
:class:`UprightRadiographd` applies the rotation and flip that make the orientation ``L\\F`` (with MONAI's own
``Rotate90`` and ``Flip``, which record themselves), and its inverse, run by ``Invertd`` with the rest of the
pre-processing, puts the mask back on the stored grid, so the mask PNG and the DICOM SEG match the file.

An orientation that is missing, not two directions, or names a lateral view (A or P along an axis) is left as it is.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Flip, MapTransform, Rotate90
from monai.transforms.inverse import InvertibleTransform

__all__ = ["UprightRadiographd", "upright_operation", "UPRIGHT"]

UPRIGHT = ("L", "F")  # along the rows, down the columns: a frontal chest as it is read
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def _directions_after(k: int, flip: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the image's +x and +y axes come from after ``Rotate90(k)`` and an optional ``Flip`` of x, as
    ``(old axis, sign)`` pairs, found by running the two transforms on coordinate maps."""
    x, y = np.meshgrid(np.arange(5.0), np.arange(7.0), indexing="ij")
    image = torch.as_tensor(np.stack([x, y]))  # two channels: the old x and y of every pixel
    image = Rotate90(k=k, spatial_axes=(0, 1))(image)
    image = Flip(spatial_axis=0)(image) if flip else image
    image = np.asarray(image)
    directions = []
    for axis in (1, 2):  # the new +x, +y: which old coordinate changes along them, and which way
        step = np.diff(image, axis=axis)
        old = int(np.argmax(np.abs(step).reshape(2, -1).mean(axis=1)))
        directions.append((old, int(np.sign(step[old].ravel()[0]))))
    return directions[0], directions[1]


_OPERATIONS = [(k, flip, _directions_after(k, flip)) for k in range(4) for flip in (False, True)]


def upright_operation(orientation: str) -> tuple[int, bool] | None:
    """The ``(k, flip)`` (``Rotate90(k)``, then ``Flip`` of x when ``flip``) that makes a radiograph of Patient
    Orientation ``orientation`` (e.g. ``"H\\L"``) upright, ``L\\F``; ``(0, False)`` for one that is already,
    ``None`` for one that does not say (missing, not two directions, or a lateral view)."""
    parts = [p.strip().upper()[:1] for p in str(orientation or "").split("\\")]
    if len(parts) != 2 or not all(p in _OPPOSITE for p in parts):
        return None
    row, column = parts
    if {row, column} & {"A", "P"} or {row, column} in ({"L", "R"}, {"H", "F"}):
        return None  # a lateral view, or two directions along one body axis: nothing to turn it by
    for k, flip, (new_x, new_y) in _OPERATIONS:
        # the patient's direction along the new +x: the old axis's direction, reversed when it runs backwards
        along = [row, column]
        seen_x = along[new_x[0]] if new_x[1] > 0 else _OPPOSITE[along[new_x[0]]]
        seen_y = along[new_y[0]] if new_y[1] > 0 else _OPPOSITE[along[new_y[0]]]
        if (seen_x, seen_y) == UPRIGHT:
            return k, flip
    return None


class UprightRadiographd(MapTransform, InvertibleTransform):
    """Turn each image upright by its ``patient_orientation`` meta value (the DICOM reader's; none for PNG), with an
    inverse that ``Invertd`` runs to put a prediction back on the stored grid.

    Args:
        keys: the image keys.
        orientation_key: the meta data key of the Patient Orientation (``"H\\L"``).
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(
        self, keys: KeysCollection, orientation_key: str = "patient_orientation", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orientation_key = orientation_key
        # the same instances forward and back: MONAI checks that a record is undone by the transform that made it
        self.rotations = [Rotate90(k=k, spatial_axes=(0, 1)) for k in range(4)]
        self.flip = Flip(spatial_axis=0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            meta = getattr(image, "meta", {})
            k, flip = upright_operation(str(meta.get(self.orientation_key, ""))) or (0, False)
            if k:  # MONAI records each turn, so each can be undone; an upright image (most) is left as it is
                image = self.rotations[k](image)
            if flip:
                image = self.flip(image)
            self.push_transform(image, extra_info={"k": k, "flip": flip})
            d[key] = image
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            info = self.pop_transform(d[key])["extra_info"]
            image = d[key]
            if info["flip"]:
                image = self.flip.inverse(image)
            d[key] = self.rotations[info["k"]].inverse(image) if info["k"] else image
        return d
