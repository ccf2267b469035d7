"""How far to trust a lung mask: the quality score of the run report (``qc_score``), from the network's own output.

The score is computed on the network's grid (128x128 by default), from the lung probability before any
post-processing and the lungs post-processing keeps there (:func:`scripts.lungs.keep_lung_components`), so it costs
well under a millisecond per image. It is an estimate of the mask's Dice against a careful reference: higher is better,
in [0, 1]. How it was chosen and how well it predicts failures: ``benchmarks/README.md``, "Mask quality score".
"""

from __future__ import annotations

import numpy as np

from .lungs import keep_lung_components

__all__ = ["soft_dice", "uncertain_fraction", "lung_quality_score"]


def soft_dice(probability: np.ndarray, mask: np.ndarray) -> float:
    """The Dice the mask would have against the model's own probabilities: ``2 sum(p m) / (sum(p) + sum(m))``.

    A mask the model is sure of everywhere scores 1; lung probability left outside the kept lungs (removed
    components, a hesitant boundary) and doubtful pixels inside them lower it."""
    p = np.asarray(probability, np.float64)
    m = np.asarray(mask, bool)
    total = p.sum() + m.sum()
    return float(2.0 * p[m].sum() / total) if total > 0 else 0.0


def uncertain_fraction(probability: np.ndarray, mask: np.ndarray, low: float = 0.1, high: float = 0.9) -> float:
    """Pixels whose lung probability is between ``low`` and ``high``, as a fraction of the mask's pixels (1 when the
    mask is empty)."""
    m = np.asarray(mask, bool)
    doubtful = np.count_nonzero((probability > low) & (probability < high))
    return float(min(1.0, doubtful / m.sum())) if m.any() else 1.0


def lung_quality_score(
    probability: np.ndarray, threshold: float = 0.5, num_components: int = 2, min_fraction: float = 0.0
) -> float:
    """The quality score of the mask post-processing makes from one lung ``probability`` map (2D, on the network's
    grid): :func:`soft_dice` against the lungs kept there, 0 for an empty mask."""
    probability = np.asarray(probability, np.float32)
    kept = keep_lung_components(probability >= threshold, num_components, min_fraction)
    if not kept.any():
        return 0.0
    return round(soft_dice(probability, kept), 4)
