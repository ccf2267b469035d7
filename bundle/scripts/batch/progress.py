"""The progress bar of a batch run: files done out of files found."""

from __future__ import annotations

import sys

from ignite.engine import Engine, Events
from tqdm import tqdm

__all__ = ["FileProgressBar"]


class FileProgressBar:
    """Ignite handler showing a tqdm bar of processed files out of all discovered files.

    ignite's ``ProgressBar`` counts iterations (batches) of the inputs still to do; this counts files, starting at the
    files already accounted for (skipped at discovery or finished by a previous run).

    Args:
        report: the run's :class:`~scripts.batch.report.RunReport` (files found, files already accounted for).
        desc: the bar's label.
    """

    def __init__(self, report, desc: str = "files") -> None:
        self.total, self.initial, self.desc = len(report.inputs), report.done_before, desc
        self.shown = report.rank == 0  # one bar for a sharded run: rank 0's, counting its share
        if report.world_size > 1:
            self.total, self.initial = len(report.pending), 0
            self.desc = f"{desc} (rank 0 of {report.world_size})"
        self.bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        if not self.shown:
            return
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _open(self, engine: Engine) -> None:
        self.bar = tqdm(
            total=self.total,
            initial=self.initial,
            desc=self.desc,
            unit="file",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def _update(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(len(engine.state.output))

    def _close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
