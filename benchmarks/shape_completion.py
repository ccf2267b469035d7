"""A screen of one lever for the dense lungs: completing a mask with the lung shape model.

The release model leaves out lung that the radiograph shows dense or hidden (the bases, behind the heart), where the
reference masks draw the whole anatomical lung field. The lung shape model (``scripts.lung_shape``) knows what whole
lung fields look like; this screen adds to each mask what the model's reconstruction of it (its coarse mask projected
on the main modes, each clipped to 3 standard deviations, resized back) holds above a threshold, repeated a few
times, either on every mask or only on masks whose shape distance is above a gate. The shape model is fitted on the
602 training masks of the fixed split alone, and the 67 validation masks are scored on the network's 128x128 grid.

    python benchmarks/frontal_chest_check.py --fit   # once: caches the release model's masks (and rewrites the model)
    python benchmarks/shape_completion.py            # reads that cache
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import machine
from frontal_chest_check import SPLIT
from monai.metrics import compute_dice


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two 2D boolean masks."""
    return float(compute_dice(torch.as_tensor(a)[None, None], torch.as_tensor(b)[None, None]))


def completed(model, mask: np.ndarray, rounds: int, threshold: float) -> np.ndarray:
    """``mask`` with what the shape model's reconstruction of it holds above ``threshold`` added, ``rounds`` times."""
    from scripts.lung_shape import GRID, coarse

    spread = 3 * np.sqrt(model.variances)
    out = mask.copy()
    for _ in range(rounds):
        modes = np.clip(model.components @ (coarse(out) - model.mean), -spread, spread)
        coarse_fit = torch.as_tensor(model.mean + model.components.T @ modes, dtype=torch.float32)
        fit = torch.nn.functional.interpolate(coarse_fit.reshape(1, 1, GRID, GRID), size=mask.shape, mode="bilinear")
        out = out | (fit[0, 0].numpy() > threshold)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lung_shape_masks.npz")
    args = parser.parse_args()
    from scripts.lung_shape import LungShapeModel

    print(machine())
    saved = np.load(args.cache)
    predicted, reference = saved["predicted"], saved["reference"]
    training_cases = len(json.loads(SPLIT.read_text())["training"])  # the cache holds them first, then the validation
    model = LungShapeModel.fit(reference[:training_cases])
    review_above = LungShapeModel.load().review_above  # the bundle's flag for review
    held_out = range(training_cases, len(predicted))
    base = np.array([dice(predicted[i], reference[i]) for i in held_out])
    distance = np.array([model.distance(predicted[i]) for i in held_out])
    print(f"as drawn: mean {base.mean():.4f}, worst {base.min():.4f}, below 0.93: {(base < 0.93).sum()}")
    print(f"shape distance of the 5 worst masks: {', '.join(f'{distance[k]:.2f}' for k in np.argsort(base)[:5])}")
    for rounds in (1, 2, 3):
        for threshold in (0.5, 0.6, 0.7):
            for gate in (0.0, 3.0, review_above):
                scores = np.array(
                    [
                        dice(completed(model, predicted[i], rounds, threshold), reference[i]) if d > gate else b
                        for i, d, b in zip(held_out, distance, base, strict=True)
                    ]
                )
                print(
                    f"rounds {rounds}, threshold {threshold}, distance above {gate:.2f}"
                    f" ({(distance > gate).sum()} masks):"
                    f" mean {scores.mean():.4f}, worst {scores.min():.4f}, below 0.93: {(scores < 0.93).sum()},"
                    f" better {(scores > base + 1e-4).sum()}, worse {(scores < base - 1e-4).sum()}"
                )


if __name__ == "__main__":
    main()
