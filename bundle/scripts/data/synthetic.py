"""Deterministic synthetic chest-X-ray-like images with lung masks: the bundle's embedded default data set.

These are NOT radiographs. They exist so that a new user can run the whole training workflow on a laptop CPU with no
data at all, and so that tests have data with a known answer. Each case has a body outline, two lung fields of varying
shape and size (the heart overlapping the image-right lung, i.e. the patient's left), a spine, ribs, noise, varying
contrast and a non-square size. Masks are the lung fields minus the heart, 0/255.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from PIL import Image

__all__ = ["generate_synthetic_dataset", "synthetic_case"]

logger = logging.getLogger(__name__)
_GENERATOR_VERSION = 1


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, power: float = 2.0):
    return (np.abs((yy - cy) / ry) ** power + np.abs((xx - cx) / rx) ** power) <= 1.0


def synthetic_case(seed: int, min_size: int = 192, max_size: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic radiograph and its lung mask.

    Args:
        seed: the case's seed; the same seed always gives the same pixels.
        min_size: smallest height/width in pixels.
        max_size: largest height/width in pixels.

    Returns:
        ``(image, mask)``: ``uint8`` arrays of shape ``(rows, columns)``; the mask is 0/255.
    """
    rng = np.random.default_rng(seed)
    rows, cols = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    yy, xx = yy / rows, xx / cols  # normalised coordinates, so shapes scale with the image

    image = np.full((rows, cols), 0.08, np.float32)
    body = _ellipse(yy, xx, 0.55, 0.5, rng.uniform(0.5, 0.6), rng.uniform(0.4, 0.48), power=2.5)
    image[body] = 0.55

    lungs = np.zeros((rows, cols), bool)
    centre_y = rng.uniform(0.42, 0.5)
    for side in (-1, 1):  # image left (patient right) and image right (patient left)
        cx = 0.5 + side * rng.uniform(0.16, 0.22)
        lung = _ellipse(
            yy,
            xx,
            centre_y + rng.uniform(-0.03, 0.03),
            cx,
            rng.uniform(0.22, 0.3),
            rng.uniform(0.09, 0.14),
            power=rng.uniform(1.6, 2.6),
        )
        lung &= yy < centre_y + rng.uniform(0.16, 0.24)  # flat-ish diaphragm
        lungs |= lung
    heart = _ellipse(
        yy,
        xx,
        centre_y + rng.uniform(0.12, 0.18),
        0.5 + rng.uniform(0.04, 0.09),
        rng.uniform(0.1, 0.14),
        rng.uniform(0.1, 0.15),
    )
    lungs &= ~heart & body
    image[lungs] = 0.22
    image[heart & body] = 0.62

    spine = (np.abs(xx - 0.5) < rng.uniform(0.03, 0.045)) & body
    image[spine] += 0.18
    rib_phase, rib_gap = rng.uniform(0, 1), rng.uniform(0.06, 0.08)
    for k in range(10):  # ribs: bright arcs across the chest
        y0 = 0.18 + rib_phase * rib_gap + k * rib_gap
        arc = np.abs(yy - (y0 + 0.25 * (xx - 0.5) ** 2 * 4)) < 0.012
        image[arc & body] += 0.1

    # contrast, gamma and noise vary per case, like exposure and detector settings do
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    image = image * rng.uniform(0.7, 1.0) + rng.uniform(0.0, 0.15)
    image += rng.normal(0, rng.uniform(0.01, 0.04), image.shape).astype(np.float32)
    image = np.clip(image, 0, 1)
    return (image * 255).round().astype(np.uint8), (lungs.astype(np.uint8) * 255)


def generate_synthetic_dataset(output_dir: str, num_cases: int = 40, seed: int = 0) -> str:
    """Write ``num_cases`` synthetic cases as ``images/SYNTH_NNNN.png`` and ``masks/SYNTH_NNNN.png``.

    Generation is skipped when ``output_dir`` already holds the same cases (same count, seed and generator version),
    so repeated runs reuse them.

    Args:
        output_dir: folder to write into (created).
        num_cases: number of image/mask pairs.
        seed: base seed; case ``i`` uses ``seed + i``.

    Returns:
        ``output_dir``.
    """
    manifest_path = os.path.join(output_dir, "synthetic.json")
    manifest = {"generator_version": _GENERATOR_VERSION, "num_cases": num_cases, "seed": seed}
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            if json.load(f) == manifest:
                return output_dir
    logger.warning(
        "Generating %d SYNTHETIC chest-X-ray-like cases in %s. They are not "
        "radiographs; a model trained on them is only a demonstration.",
        num_cases,
        output_dir,
    )
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    for i in range(num_cases):
        image, mask = synthetic_case(seed + i)
        name = f"SYNTH_{i:04d}.png"
        Image.fromarray(image).save(os.path.join(output_dir, "images", name))
        Image.fromarray(mask).save(os.path.join(output_dir, "masks", name))
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return output_dir
