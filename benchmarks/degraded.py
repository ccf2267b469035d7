"""Degraded copies of radiographs with their lung masks: images a model really gets wrong, for validating a mask
quality score (``benchmarks/cross_validation.py --qc``).

Each kind is a change users' archives contain: strong detector noise, a blurred (moved or downsampled) image, a
radiograph rotated by 30-90 degrees (a scanned film on its side), inverted grey levels (a MONOCHROME1 image read as
MONOCHROME2), a field of view cut to half the chest, and a heavy gamma (an over-processed export). Geometric changes
move the mask with the image; the others keep it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

DEGRADATIONS = ("noise", "blur", "rotation", "inverted", "half_crop", "gamma")


def degrade(image: np.ndarray, mask: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A degraded copy of a grey ``(rows, columns)`` uint8 ``image`` and its 0/255 ``mask``."""
    if kind == "noise":
        noisy = image.astype(np.float32) + rng.normal(0, 0.25 * 255, image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), mask
    if kind == "blur":
        radius = 0.012 * max(image.shape)
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))), mask
    if kind == "rotation":
        angle = float(rng.uniform(30, 90) * rng.choice([-1, 1]))
        turned = Image.fromarray(image).rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=0)
        turned_mask = Image.fromarray(mask).rotate(angle, resample=Image.NEAREST, expand=True, fillcolor=0)
        return np.asarray(turned), np.asarray(turned_mask)
    if kind == "inverted":
        return 255 - image, mask
    if kind == "half_crop":
        side = int(rng.integers(0, 2))  # the image's left or right half: one lung and the mediastinum
        half = image.shape[1] // 2
        columns = slice(0, half) if side == 0 else slice(half, None)
        return np.ascontiguousarray(image[:, columns]), np.ascontiguousarray(mask[:, columns])
    if kind == "gamma":
        return (255 * (image / 255.0) ** 3.0).astype(np.uint8), mask
    raise ValueError(f"unknown degradation {kind!r}; one of {DEGRADATIONS}")


def degraded_cases(cases: list[dict], folder: Path, seed: int = 0) -> list[dict]:
    """Write every degradation of every case (``{"image": ..., "label": ...}`` paths) into ``folder`` as PNG; return
    the new cases, named ``<case>__<kind>.png``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    out = []
    for index, case in enumerate(cases):
        with Image.open(case["image"]) as img:
            image = np.asarray(img.convert("L"))
        with Image.open(case["label"]) as lbl:
            truth = lbl.convert("L")
            if truth.size != (image.shape[1], image.shape[0]):  # Shenzhen masks are stored at another size
                truth = truth.resize((image.shape[1], image.shape[0]), Image.NEAREST)
            mask = np.where(np.asarray(truth) > 127, 255, 0).astype(np.uint8)
        for number, kind in enumerate(DEGRADATIONS):
            rng = np.random.default_rng([seed, index, number])
            bad_image, bad_mask = degrade(image, mask, kind, rng)
            name = f"{Path(case['image']).stem}__{kind}.png"
            Image.fromarray(bad_image).save(folder / "images" / name)
            Image.fromarray(bad_mask).save(folder / "masks" / name)
            out.append({"image": str(folder / "images" / name), "label": str(folder / "masks" / name)})
    return out
