"""The training run's curves as a picture: ``<output_dir>/training_curves.png`` (loss and validation Dice per epoch),
written when training ends, beside TensorBoard's event files, for people who do not run TensorBoard."""

from __future__ import annotations

import logging
import math
import os

import torch
from ignite.engine import Engine, Events

from ..io.files import atomic_write

__all__ = ["TrainingCurves"]

logger = logging.getLogger(__name__)


class TrainingCurves:
    """Ignite handler for the trainer: the mean training loss of every epoch and the validation metric of every
    validated epoch, drawn with matplotlib into ``<output_dir>/<filename>`` when the run completes (also when it ends
    early, e.g. interrupted by a signal the trainer handles).

    Args:
        output_dir: where the picture goes (``train.json``'s ``output_dir``, ``eval/`` by default).
        evaluator: the validation engine whose ``metric`` is drawn (``None``: loss only).
        metric: the evaluator's metric name.
        loss_key: key of the loss in the trainer's output.
        filename: the picture's name.
    """

    def __init__(
        self,
        output_dir: str,
        evaluator: Engine | None = None,
        metric: str = "val_mean_dice",
        loss_key: str = "loss",
        filename: str = "training_curves.png",
    ) -> None:
        self.path = os.path.join(output_dir, filename)
        self.evaluator, self.metric, self.loss_key = evaluator, metric, loss_key
        self.losses: list = []
        self.epoch_losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self.write)
        engine.add_event_handler(Events.TERMINATE, self.write)

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            if isinstance(item, dict) and self.loss_key in item:
                # kept as a tensor on its device: a float() here would wait for the GPU at every step
                loss = item[self.loss_key]
                self.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
                break

    def _epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if self.losses:  # one transfer per epoch
            self.epoch_losses.append((epoch, float(sum(self.losses)) / len(self.losses)))
        self.losses = []
        state = getattr(self.evaluator, "state", None)
        # the evaluator ran for this epoch (ValidationHandler runs it with the trainer's epoch) and has the metric
        if state is not None and getattr(state, "epoch", None) == epoch and self.metric in (state.metrics or {}):
            value = float(state.metrics[self.metric])
            if math.isfinite(value):
                self.scores.append((epoch, value))

    def write(self, engine: Engine | None = None) -> str | None:
        """Draw the curves recorded so far; returns the picture's path (``None`` before the first epoch)."""
        if not self.epoch_losses:
            return None
        import matplotlib

        matplotlib.use("Agg")  # no display: a file only
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator

        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        left.plot(*zip(*self.epoch_losses, strict=True), marker=".", color="#c0392b")
        left.set(title="training loss (epoch mean)", xlabel="epoch", ylabel="loss")
        if self.scores:
            best = max(self.scores, key=lambda s: s[1])
            right.plot(*zip(*self.scores, strict=True), marker=".", color="#2c7fb8")
            right.scatter([best[0]], [best[1]], color="black", zorder=3, label=f"best {best[1]:.4f} (epoch {best[0]})")
            right.legend(loc="lower right")
        else:
            right.text(0.5, 0.5, "no validation", ha="center", va="center", transform=right.transAxes)
        right.set(title=f"validation ({self.metric})", xlabel="epoch", ylabel=self.metric)
        for axes in (left, right):
            axes.grid(alpha=0.3)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.tight_layout()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        atomic_write(self.path, lambda tmp: figure.savefig(tmp, format="png"))
        plt.close(figure)
        logger.info("training curves: %s", self.path)
        return self.path
