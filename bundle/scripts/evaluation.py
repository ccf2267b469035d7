"""What ``configs/evaluate.json`` needs besides MONAI: the list of cases to evaluate and a per-case metrics table.

Metrics are MONAI's (``MeanDice``, ``MeanIoUHandler``, ``HausdorffDistance`` at the 95th percentile,
``SurfaceDistance``), computed on each image's original grid (the prediction is inverted back with ``Invertd``; the
ground-truth mask is only resized when it is stored at another size than its image, as the Kaggle Shenzhen masks
are); MONAI's ``MetricsSaver`` writes the per-case CSVs and the summary.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from ignite.engine import Engine, Events

from .datalist import find_pairs, prepare_datalist

__all__ = ["evaluation_cases", "CaseMetricsTable"]

logger = logging.getLogger(__name__)


def evaluation_cases(dataset_dir: str | None, synthetic_dir: str = "./data/synthetic", split: str = "all") -> list:
    """The ``{"image", "label"}`` cases to evaluate.

    Args:
        dataset_dir: a folder with images and masks (``images/`` + ``masks/``, or the Kaggle layout), a datalist JSON
            file, or empty for the held-out test split of the synthetic default set.
        synthetic_dir: where the synthetic default set is (generated when missing).
        split: ``"all"`` for every labelled case of a folder (every list of a datalist file), or one of
            ``"training"``, ``"validation"``, ``"test"`` (the same seeded split as training).
    """
    if not dataset_dir:
        cases = prepare_datalist(None, synthetic_dir=synthetic_dir)["test"]
    elif split == "all" and os.path.isdir(str(dataset_dir)):
        cases = find_pairs(str(dataset_dir))["pairs"]
    elif split == "all":
        lists = prepare_datalist(dataset_dir)
        cases = lists["training"] + lists["validation"] + lists["test"]
    else:
        cases = prepare_datalist(dataset_dir)[split]
    if not cases:
        raise ValueError(f"no labelled cases to evaluate in {dataset_dir or synthetic_dir} (split {split!r})")
    logger.info("evaluating %d cases", len(cases))
    return cases


class CaseMetricsTable:
    """Ignite handler that logs a table of every case's metrics and their mean when the evaluation ends.

    Args:
        metrics: names of metrics attached to the engine with ``save_details=True`` (e.g. ``["dice", "iou"]``).
        image_key: batch key of the image, whose meta data give the file name.
    """

    def __init__(self, metrics: list[str], image_key: str = "image") -> None:
        self.metrics = list(metrics)
        self.image_key = image_key
        self.names: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.names.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.batch:
            name = item[self.image_key].meta.get("filename_or_obj", "?")
            self.names.append(os.path.basename(str(name)))

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {})
        columns = [m for m in self.metrics if m in details]
        values = {m: torch.as_tensor(details[m]).float().reshape(len(self.names), -1).mean(dim=1) for m in columns}
        width = max([len(n) for n in self.names] + [4])
        lines = [f"{'case':<{width}}  " + "  ".join(f"{m:>8}" for m in columns)]
        for i, name in enumerate(self.names):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{values[m][i].item():8.4f}" for m in columns))

        def mean(v: torch.Tensor) -> float:
            finite = v[torch.isfinite(v)]
            return finite.mean().item() if finite.numel() else math.nan

        lines.append(f"{'mean':<{width}}  " + "  ".join(f"{mean(values[m]):8.4f}" for m in columns))
        logger.info("per-case metrics (%d cases):\n%s", len(self.names), "\n".join(lines))
