"""Drawing training cases so that a small source of images is not drowned by a large one.

A chest X-ray collection is often a union of sources that differ in more than their numbers: in Kaggle's "Chest Xray
Masks and Labels", 566 Shenzhen and 138 Montgomery cases, and the Montgomery masks are drawn wider, on larger images
with a black band below the patient. A uniformly shuffled epoch shows the network the small source a fifth of the
time, so it learns the large source's conventions; :func:`source_balanced_sampler` draws each case with probability
proportional to ``1 / n_source ** balance`` instead (0: uniform, as a shuffle; 1: every source equally often).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

__all__ = ["image_source", "source_balanced_sampler"]

_SOURCE_PREFIX = re.compile(r"^[A-Za-z]+")


def image_source(item: dict | str) -> str:
    """The source of a case: the letters its image's file name starts with (``CHNCXR_0001_0.png`` -> ``CHNCXR``,
    ``MCUCXR_0001_0.png`` -> ``MCUCXR``, the naming of the public collections), or ``""`` for none."""
    path = item["image"] if isinstance(item, dict) else item
    match = _SOURCE_PREFIX.match(os.path.basename(str(path)))
    return match.group(0).upper() if match else ""


def source_balanced_sampler(items: Sequence, balance: float = 0.0) -> Sampler:
    """A sampler that draws ``len(items)`` cases per epoch, with replacement, each with weight
    ``1 / n_source ** balance``; a plain shuffle (``RandomSampler``, what ``DataLoader(shuffle=True)`` makes) when
    ``balance`` is 0 or there is only one source.

    Args:
        items: the training data set (its ``data``, the datalist, is read: no case is loaded), or its datalist
            (``{"image", ...}`` items, or image paths).
        balance: 0 (uniform) to 1 (each source drawn equally often); 0.5 gives a source of ``n`` cases a share
            proportional to ``sqrt(n)``.
    """
    balance = float(balance)
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"the source balance must be between 0 and 1; got {balance!r}.")
    items = getattr(items, "data", items)
    sources = [image_source(item) for item in items]
    counts = Counter(sources)
    if balance == 0.0 or len(counts) < 2:
        return RandomSampler(items)
    weights = torch.tensor([counts[s] ** -balance for s in sources], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(sources), replacement=True)
