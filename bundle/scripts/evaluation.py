"""What ``configs/evaluate.json`` needs besides MONAI: a per-case metrics table, and the per-case values of the
engine's output (the mask quality score) as metric details MONAI's ``MetricsSaver`` writes (the cases to evaluate
come from :func:`scripts.data.datalist.evaluation_cases`).

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

__all__ = ["CaseMetricsTable", "ItemValueDetails"]

logger = logging.getLogger(__name__)


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


class ItemValueDetails:
    """Ignite handler that keeps a number of every case (e.g. ``qc_score``, which a post-processing transform adds) as
    that name's per-case metric details (``engine.state.metric_details``), so that MONAI's ``MetricsSaver`` writes
    ``<name>_raw.csv`` beside the metrics' own, one row per case, and :class:`CaseMetricsTable` can list it.

    Args:
        keys: keys of the items after post-processing holding one number per case: looked up in the engine's output
            item (where MONAI's engines keep a key a post-processing transform adds), then in its batch item.
    """

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        self.values: dict[str, list[float]] = {key: [] for key in self.keys}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: [v.clear() for v in self.values.values()])
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not hasattr(engine.state, "metric_details") or engine.state.metric_details is None:
            engine.state.metric_details = {}
        for key in self.keys:
            for batch_item, output_item in zip(engine.state.batch, engine.state.output, strict=True):
                self.values[key].append(float(output_item.get(key, batch_item.get(key, math.nan))))
            engine.state.metric_details[key] = torch.tensor(self.values[key]).reshape(-1, 1)
