"""Choosing the MONAI data set class by the size of the data: in memory, on disk, or not cached.

The deterministic part of the preprocessing (decode the PNG/DICOM, grey, scale, resize to ``image_size``) is what
dominates a CPU epoch on full-size radiographs; caching its output is what makes epochs fast. Which cache fits:

* ``"cache"``: MONAI ``CacheDataset``, the output kept in RAM (``cache_rate`` of the items, computed up front).
  Each case costs ``2 * H * W * 4`` bytes (float32 image + label) per process; under DDP every rank caches its own
  copy of the list.
* ``"persistent"``: MONAI ``PersistentDataset``, the output written once to ``cache_dir`` as ``.pt`` files and read
  back in later epochs and later runs: for sets larger than RAM, or to share one preprocessing between runs. The
  cache file names hash the item *and* the deterministic transforms, so changing ``image_size`` or the transforms
  does not reuse stale files.
* ``"plain"``: MONAI ``Dataset``, nothing cached: every epoch decodes every full-size image again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = ["DATASET_TYPES", "make_dataset"]

DATASET_TYPES = ("cache", "persistent", "plain")


def make_dataset(
    data: Sequence,
    transform: Callable,
    dataset_type: str = "cache",
    cache_rate: float = 1.0,
    cache_dir: str | None = None,
    num_workers: int | None = 1,
) -> Dataset:
    """Build the data set class ``dataset_type`` names over ``data``.

    Args:
        data: the datalist items (``{"image", "label"}`` dicts).
        transform: the preprocessing ``Compose``; its deterministic prefix is what gets cached.
        dataset_type: ``"cache"`` (``CacheDataset``), ``"persistent"`` (``PersistentDataset``) or ``"plain"``
            (``Dataset``).
        cache_rate: fraction of the items ``CacheDataset`` keeps in memory (the rest are processed every epoch).
        cache_dir: folder of the ``PersistentDataset`` cache (created); required for ``"persistent"``.
        num_workers: threads ``CacheDataset`` uses to fill its cache.

    Raises:
        ValueError: an unknown ``dataset_type``, or ``"persistent"`` without ``cache_dir``.
    """
    if dataset_type == "cache":
        return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers)
    if dataset_type == "persistent":
        if not cache_dir:
            raise ValueError("dataset_type 'persistent' needs a cache_dir (e.g. --cache_dir /fast/disk/cache).")
        # hash the deterministic transforms' parameters too (pickle_hashing; MONAI's default hashes the items only)
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
    if dataset_type == "plain":
        return Dataset(data=data, transform=transform)
    raise ValueError(f"unknown dataset_type {dataset_type!r}; use one of {', '.join(DATASET_TYPES)}.")
