"""How much a lung mask looks like the lungs of a frontal chest radiograph: a statistical shape model of lung masks.

A network trained on frontal chests draws lung-like regions into whatever it is given: a hand, a knee, a chest
turned on its side or cut in half. The mask's quality score (:mod:`scripts.quality`) cannot tell, as the network may
be sure of a wrong mask. The shape of the mask can: frontal chests put two lungs of a familiar outline in familiar
places of the frame, and a mask elsewhere, of another outline, or of one lung is far from all of them.

:class:`LungShapeModel` is a principal component model (PCA) of lung masks on a coarse grid (32 x 32, the frame of
the network's input: after the padding crop, resized), learned from the reference masks of ``kaggle-lungs-512``
(``benchmarks/frontal_chest_check.py --fit``). A mask's :meth:`~LungShapeModel.distance` is its squared
Mahalanobis distance within the model's main modes plus its squared distance from them, each divided by its expected
value, so a typical chest mask scores about 2 and the score grows with how unlike a chest mask it is. The model file
holds its thresholds, measured on chests the model did not learn from (``benchmarks/frontal_chest_check.py``): above
``review_above`` a mask is flagged for review; above ``skip_above``, far beyond every intact chest measured, or with
lungs in less than ``skip_below_fraction`` of the frame, the input is taken for something else than a frontal chest
and skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["LungShapeModel", "SHAPE_MODEL_FILE", "GRID", "CHEST", "DOUBTFUL", "NOT_A_CHEST"]

CHEST, DOUBTFUL, NOT_A_CHEST = "chest", "doubtful", "not a chest"
GRID = 32  # the coarse grid: a lung's outline at 4 network pixels per cell, cheap to compare (1,024 values)
SHAPE_MODEL_FILE = Path(__file__).resolve().parents[1] / "models" / "lung_shape.npz"


def coarse(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2D mask (any size; non-zero is lung) as the fraction of lung in each cell of the ``GRID`` x ``GRID`` grid,
    flattened."""
    tensor = torch.as_tensor(np.asarray(mask) > 0, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(tensor, size=(GRID, GRID), mode="area").flatten().numpy()


class LungShapeModel:
    """A principal component model of coarse lung masks, with the thresholds of its distance.

    Args:
        mean: the mean coarse mask (``GRID * GRID`` values).
        components: the main modes, ``(k, GRID * GRID)``, orthonormal rows.
        variances: the variance along each mode (``k`` values).
        residual_variance: the mean variance left outside the modes, per value.
        review_above: a distance above which a mask is flagged for review.
        skip_above: a distance above which an input is not taken for a frontal chest.
        skip_below_fraction: a share of the network's grid below which the lungs found are too little for a frontal
            chest (the network finds next to nothing in a hand or a knee, whose masks are all alike: near-empty).
            Kept at half the least a chest was measured with: the little, hesitant lung the network finds in a
            pelvis is what it finds in a chest whose lungs are almost all opaque, and a chest stays ``ok``.
    """

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        variances: np.ndarray,
        residual_variance: float,
        review_above: float = float("inf"),
        skip_above: float = float("inf"),
        skip_below_fraction: float = 0.0,
    ) -> None:
        self.mean = np.asarray(mean, np.float64)
        self.components = np.asarray(components, np.float64)
        self.variances = np.asarray(variances, np.float64)
        self.residual_variance = float(residual_variance)
        self.review_above, self.skip_above = float(review_above), float(skip_above)
        self.skip_below_fraction = float(skip_below_fraction)

    @classmethod
    def fit(cls, masks, modes: int = 16) -> LungShapeModel:
        """Learn the model from lung masks (each a 2D array on the network's input frame)."""
        data = np.stack([coarse(m) for m in masks]).astype(np.float64)
        mean = data.mean(axis=0)
        _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
        eigen = singular**2 / max(len(data) - 1, 1)
        residual = eigen[modes:].sum() / (data.shape[1] - modes)
        return cls(mean, vt[:modes], eigen[:modes], max(residual, 1e-8))

    def distance(self, mask: np.ndarray | torch.Tensor) -> float:
        """How far ``mask`` is from the lungs the model learned: about 2 for a typical one, larger the less alike;
        an empty mask is infinitely far."""
        x = coarse(mask).astype(np.float64)
        if not x.any():
            return float("inf")
        z = x - self.mean
        c = self.components @ z
        residual = z - self.components.T @ c
        within = float(np.sum(c**2 / self.variances)) / len(self.variances)
        outside = float(residual @ residual) / self.residual_variance / (len(z) - len(self.variances))
        return within + outside

    def judge(self, mask: np.ndarray | torch.Tensor) -> tuple[str, float, str]:
        """What the lungs found in an image (on the network's grid) say of it: ``(verdict, distance, evidence)``,
        the verdict :data:`CHEST`, :data:`DOUBTFUL` (flag the mask for review) or :data:`NOT_A_CHEST` (skip the
        input), the evidence in words (``"lung shape 1.63"``)."""
        lung = np.asarray(mask) > 0
        fraction = float(lung.mean()) if lung.size else 0.0
        distance = self.distance(lung)
        if fraction < self.skip_below_fraction:
            return NOT_A_CHEST, distance, f"lungs found in {fraction:.1%} of the image, too little for a chest"
        if distance > self.skip_above:
            return NOT_A_CHEST, distance, f"lung shape implausible ({distance:.1f}, above {self.skip_above:.1f})"
        if distance > self.review_above:
            return DOUBTFUL, distance, f"lung shape doubtful ({distance:.1f}, above {self.review_above:.1f})"
        return CHEST, distance, f"lung shape {distance:.2f}"

    def save(self, path: str | Path, **provenance: str) -> None:
        """Write the model and its thresholds (with ``provenance`` texts) as a ``.npz`` file."""
        np.savez_compressed(
            path,
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
            variances=self.variances,
            residual_variance=self.residual_variance,
            review_above=self.review_above,
            skip_above=self.skip_above,
            skip_below_fraction=self.skip_below_fraction,
            **{key: np.asarray(str(value)) for key, value in provenance.items()},
        )

    @classmethod
    def load(cls, path: str | Path = SHAPE_MODEL_FILE) -> LungShapeModel:
        """Read a model :meth:`save` wrote (by default the bundle's own, ``models/lung_shape.npz``)."""
        with np.load(path) as found:
            return cls(
                found["mean"],
                found["components"],
                found["variances"],
                float(found["residual_variance"]),
                float(found["review_above"]),
                float(found["skip_above"]),
                float(found["skip_below_fraction"]),
            )
