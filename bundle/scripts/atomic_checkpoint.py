"""A MONAI ``CheckpointSaver`` that survives being killed at any moment, and remembers its best score across a resume.

MONAI's ``CheckpointSaver`` (1.6) writes with ``torch.save`` straight onto the final name (``atomic=False``) and,
through ignite's ``Checkpoint``, deletes the file it replaces *before* writing the new one. A training run killed
(SIGKILL, pre-emption, out of memory) during a save can therefore leave ``model.pt`` half-written, or no
``model.pt``, or no ``checkpoint_epoch=N.pt`` at all to resume from. Its best-metric tracker also starts empty after a
resume, so the first validation after the restart overwrites ``model.pt`` even when it is worse than the best before
the crash. :class:`AtomicCheckpointSaver` keeps MONAI's behaviour and file names and fixes these:

* every file is written to a hidden partial file in the same folder and moved onto its name with ``os.replace``
  (atomic on POSIX and Windows): a reader sees the old complete file or the new complete file, never a torn one;
* files being replaced are deleted only after their replacement is complete, so there is always one complete
  ``model.pt`` and one complete interval checkpoint;
* ``state_dict()``/``load_state_dict()`` carry the best-metric tracker (score and file), so putting the saver into
  the interval checkpoint's ``save_dict`` makes a resumed run compare against the best score before the crash.
  ``model.pt`` itself stays a plain ``state_dict`` of the network;
* after a resume, the interval checkpoints the killed run wrote are taken back into the ``n_saved`` rotation, so
  they are deleted in turn rather than left behind.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicDiskSaver", "AtomicCheckpointSaver"]

_PARTIAL_MARK = ".partial-"


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes atomically, optionally to a fixed file name, and deletes replaced files last.

    Args:
        dirname: folder to save into (created on the saving rank).
        filename: fixed file name (e.g. ``"model.pt"``) used instead of the name ignite generates; ``None`` keeps it.
        save_on_rank: the rank that writes (ignite's convention: 0).
    """

    def __init__(self, dirname: str, filename: str | None = None, save_on_rank: int = 0) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        self.filename = filename
        self._to_remove: list[str] = []
        if idist.get_rank() == save_on_rank:
            # partial files are what a killed save leaves behind; they were never renamed, so nothing refers to them
            for stale in glob.glob(os.path.join(glob.escape(str(self.dirname)), f".*{_PARTIAL_MARK}*")):
                Path(stale).unlink(missing_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        # the new file is complete: only now delete the ones it replaces (ignite asks to remove them before saving)
        to_remove, self._to_remove = self._to_remove, []
        if idist.get_rank() == self.save_on_rank:
            for old in to_remove:
                if old != filename:
                    (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._to_remove.append(self.filename or filename)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        partial = path.with_name(f".{path.name}{_PARTIAL_MARK}{os.getpid()}")
        try:
            func(checkpoint, partial, **self.kwargs)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` (same arguments, files and events) with atomic writes and a resumable best score.

    See the module docstring. To keep the best score across a resume, add the validation saver to the interval
    checkpoint's ``save_dict`` (``train#checkpoint_dict`` in ``train.json``); ``CheckpointLoader`` then restores it.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        prefix = kwargs.get("file_prefix", "")
        self._file_prefix = f"{prefix}_" if prefix else ""
        # MONAI builds its ignite Checkpoint objects with a private non-atomic saver: swap in the atomic one
        fixed_names = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attr, filename in fixed_names.items():
            checkpoint = getattr(self, attr)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=filename)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self._interval_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._adopt_resumed_interval_checkpoints)

    def _adopt_resumed_interval_checkpoints(self, engine: Engine) -> None:
        """After a resume, take over the interval checkpoints the killed run wrote up to the resumed point, so the
        rotation (``n_saved``) deletes them in turn instead of leaving one stale file per pre-emption."""
        checkpoint = self._interval_checkpoint
        score_name = "epoch" if self.epoch_level else "iteration"
        current = engine.state.epoch if self.epoch_level else engine.state.iteration
        if checkpoint is None or current == 0 or checkpoint.state_dict()["_saved"]:
            return
        pattern = re.compile(rf"{re.escape(self._file_prefix)}checkpoint_{score_name}=(\d+)\.pt")
        found = []
        for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []:
            match = pattern.fullmatch(name)
            if match and int(match.group(1)) <= current:
                found.append((int(match.group(1)), name))
        n_saved = checkpoint.n_saved or len(found)
        checkpoint.load_state_dict({"_saved": sorted(found)[-n_saved:] if found else []})

    def state_dict(self) -> dict:
        """The best-metric tracker's state: ``{"saved": [(score, filename)]}`` (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return {"saved": []}
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the best-metric tracker, so a resumed run only replaces ``model.pt`` with a better model."""
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict(state_dict)
