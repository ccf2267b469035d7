"""How far to trust a lung mask: the quality score of the run report (``qc_score``), from the network's own output.

The score is computed on the network's grid (128x128 by default), from the lung probability before any
post-processing and the lungs post-processing keeps there (by
:class:`scripts.transforms.postprocess.KeepLungProbabilityd`, which records it), so it costs well under a millisecond
per image. It is an estimate of the mask's Dice against a careful reference: higher is better,
in [0, 1]. How it was chosen and how well it predicts failures: ``benchmarks/README.md``, "Mask quality score".
"""

from __future__ import annotations

import numpy as np

__all__ = ["soft_dice", "lung_quality_score"]


def soft_dice(probability: np.ndarray, mask: np.ndarray) -> float:
    """The Dice the mask would have against the model's own probabilities: ``2 sum(p m) / (sum(p) + sum(m))``.

    A mask the model is sure of everywhere scores 1; lung probability left outside the kept lungs (removed
    components, a hesitant boundary) and doubtful pixels inside them lower it."""
    p = np.asarray(probability, np.float64)
    m = np.asarray(mask, bool)
    total = p.sum() + m.sum()
    return float(2.0 * p[m].sum() / total) if total > 0 else 0.0


def lung_quality_score(probability: np.ndarray, kept: np.ndarray) -> float:
    """The quality score of the lungs post-processing keeps (``kept``, boolean) from one lung ``probability`` map, both
    on the network's grid: :func:`soft_dice`, rounded to 4 decimals; 0 for an empty mask."""
    return round(soft_dice(probability, kept), 4) if np.any(kept) else 0.0
