"""Saving and loading weights so that a run killed at any moment loses little: the epoch in progress and at most the
``checkpoint_every_s`` seconds before it (:class:`SaveSchedule`).

* :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` with atomic writes and a best score that survives a
  resume. MONAI's saver (1.6) writes with ``torch.save`` straight onto the final name and, through ignite's
  ``Checkpoint``, deletes the file it replaces *before* writing the new one, so a run killed during a save can leave
  the model half-written, or none, or no ``checkpoint_epoch=N.pt`` to resume from; its best-metric tracker also
  starts empty after a resume, so the first validation after the restart overwrites the model even with a worse
  model. Here every file is written to a temporary name and renamed into place (:func:`scripts.io.files.atomic_write`),
  replaced files are deleted only after their replacement is complete, ``state_dict()``/``load_state_dict()`` carry
  the best-metric tracker (put the saver into the interval checkpoint's ``save_dict``), and after a resume the interval
  checkpoints the killed run wrote are taken back into the ``n_saved`` rotation. The model (``train.json``'s
  ``model_file``: ``model_trained.pt``, never the shipped ``model.pt``; MONAI Label's trainer writes ``model.pt``)
  stays a plain ``state_dict`` of the network, and its settings are written beside it (``model_trained.json``,
  :func:`scripts.settings.write_model_settings`).
* :class:`SaveModelWithoutValidation`: the model after every epoch when there is no validation data (MONAI's
  evaluator skips an empty loader, so the best-metric saver would never write one).
* :class:`ResumeTraining`: ``--resume true`` continues from the newest interval checkpoint.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from ..io.files import atomic_write, remove_temporary_files
from ..process_group import get_rank
from ..settings import is_on, write_model_settings

__all__ = [
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "SaveSchedule",
    "SaveModelWithoutValidation",
    "ResumeTraining",
    "latest_checkpoint",
]


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes atomically, optionally to a fixed file name, and deletes replaced files last.

    Args:
        dirname: folder to save into (created on the saving rank).
        filename: fixed file name (e.g. ``"model.pt"``) used instead of the name ignite generates; ``None`` keeps it.
        model_settings: when given, the settings the model was trained with, written beside each saved file
            (``model.json`` beside ``model.pt``).
        save_on_rank: the rank that writes (ignite's convention: 0).
    """

    def __init__(
        self, dirname: str, filename: str | None = None, model_settings: dict | None = None, save_on_rank: int = 0
    ) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        self.filename = filename
        self.model_settings = model_settings
        self._to_remove: list[str] = []
        if get_rank() == save_on_rank:  # what a killed save left: never renamed, so nothing refers to it
            remove_temporary_files(str(self.dirname), recursive=False)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        if get_rank() != self.save_on_rank:
            return
        if self.model_settings is not None:
            write_model_settings(str(self.dirname / filename), self.model_settings)
        # the new file is complete: only now delete the ones it replaces (ignite asks to remove them before saving)
        to_remove, self._to_remove = self._to_remove, []
        for old in to_remove:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._to_remove.append(self.filename or filename)

    def _save_func(self, checkpoint: Mapping, path: Path, func) -> None:
        atomic_write(str(path), lambda tmp: func(checkpoint, tmp, **self.kwargs))


class SaveSchedule:
    """Which epochs of a run to save: the first, the last, and in between one whenever ``seconds`` have passed since
    the last save.

    Writing the model, optimiser and trainer state (about 220 MB for this network) takes 0.5-0.8 s on a local disk;
    after every epoch of a small data set that was a quarter of the training time (37 cases, 3 s epochs). With this
    schedule a killed run loses at most ``seconds`` plus the epoch in progress, whatever the epoch length.

    Args:
        seconds: the least time between two saves; 0 saves after every epoch.
    """

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = float(seconds)
        self._last_save: float | None = None

    def due(self, engine: Engine) -> bool:
        """Whether to save now, at the end of ``engine``'s current epoch; remembers the time when it says yes."""
        now = time.monotonic()
        first_or_last = self._last_save is None or engine.state.epoch >= (engine.state.max_epochs or 0)
        if first_or_last or now - self._last_save >= self.seconds:
            self._last_save = now
            return True
        return False


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` (same arguments, files and events) with atomic writes and a resumable best score.

    See the module docstring. To keep the best score across a resume, add the validation saver to the interval
    checkpoint's ``save_dict`` (``train#checkpoint_dict`` in ``train.json``); ``CheckpointLoader`` then restores it.

    Args:
        save_dir: the folder of the checkpoints.
        save_dict: what to save (MONAI's ``CheckpointSaver``).
        model_settings: the settings to write beside the key-metric model (``model.json`` beside ``model.pt``).
        save_every_s: the interval checkpoint of an epoch-level saver is written after the first and the last epoch
            and in between at most once in this many seconds (:class:`SaveSchedule`); 0: every ``save_interval``.
        kwargs: MONAI ``CheckpointSaver``'s other arguments.
    """

    def __init__(
        self, save_dir: str, save_dict: dict, model_settings: dict | None = None, save_every_s: float = 0, **kwargs
    ) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self.save_schedule = SaveSchedule(save_every_s)
        prefix = kwargs.get("file_prefix", "")
        self._file_prefix = f"{prefix}_" if prefix else ""
        # MONAI builds its ignite Checkpoint objects with a private non-atomic saver: swap in the atomic one
        fixed_names = {
            "_final_checkpoint": (kwargs.get("final_filename"), None),
            "_key_metric_checkpoint": (kwargs.get("key_metric_filename"), model_settings),
            "_interval_checkpoint": (None, None),
        }
        for attr, (filename, settings) in fixed_names.items():
            checkpoint = getattr(self, attr)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=filename, model_settings=settings)

    def attach(self, engine: Engine) -> None:
        if get_rank() != 0:  # under DDP every rank holds the same model: rank 0 alone writes it
            return
        super().attach(engine)
        if self._interval_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._adopt_resumed_interval_checkpoints)

    def interval_completed(self, engine: Engine) -> None:
        if not self.epoch_level or self.save_schedule.due(engine):
            super().interval_completed(engine)

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
        """Restore the best-metric tracker, so a resumed run only replaces the saved model with a better one."""
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class SaveModelWithoutValidation:
    """Save the network's weights (``filename``) after epochs (all of them, or as ``save_every_s`` says), but only
    when the evaluator has no data.

    ``train.json`` writes its model from the validation saver each time the key metric improves. A run whose
    validation list is empty (MONAI Label's ``val_split`` 0, or too few labelled images to split any off) never
    computes that metric, so no model would be written and the next inference would keep using the old
    weights, or find none. With no validation there is no "best" model, so the latest one is the model: the file is
    rewritten after the epochs :class:`SaveSchedule` picks (the last one always), in the same format as the
    best-metric saver's (a plain ``state_dict``, unwrapped from DDP, with ``model.json`` beside it), atomically, and
    only on rank 0.

    Args:
        evaluator: the validation engine (``@validate#evaluator``); its ``data_loader`` decides whether to save.
        network: the network whose weights are saved (``@network``, plain or DDP-wrapped).
        save_dir: folder of the model (``@ckpt_dir``, created).
        model_settings: the settings written beside it (:func:`scripts.settings.write_model_settings`).
        filename: the file name (``train.json``'s ``model_file``).
        save_every_s: save after the first and the last epoch and in between at most once in this many seconds
            (:class:`SaveSchedule`); 0: after every epoch.
    """

    def __init__(
        self,
        evaluator: Engine,
        network: torch.nn.Module,
        save_dir: str,
        model_settings: dict | None = None,
        filename: str = "model_trained.pt",
        save_every_s: float = 0,
    ) -> None:
        self.evaluator = evaluator
        self.network = network
        self.save_dir = save_dir
        self.model_settings = model_settings
        self.filename = filename
        self.save_schedule = SaveSchedule(save_every_s)

    def attach(self, engine: Engine) -> None:
        """Run after every training epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def has_validation_data(self) -> bool:
        """Whether the evaluator has anything to validate on (and so its own saver writes the model)."""
        loader = getattr(self.evaluator, "data_loader", None)
        try:
            return loader is not None and len(loader) > 0
        except TypeError:  # an iterable without a length: assume it has data, as the evaluator will run it
            return True

    def __call__(self, engine: Engine) -> None:
        if self.has_validation_data() or get_rank() != 0 or not self.save_schedule.due(engine):
            return
        network = self.network.module if hasattr(self.network, "module") else self.network
        path = atomic_write(
            os.path.join(self.save_dir, self.filename), lambda tmp: torch.save(network.state_dict(), tmp)
        )
        if self.model_settings is not None:
            write_model_settings(path, self.model_settings)
        engine.logger.info(f"no validation data: saved the epoch {engine.state.epoch} model to {path}")


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> str:
    """Return the most recently written checkpoint of the training's interval ``CheckpointSaver``.

    The newest file, not the highest epoch number: a fresh run in a folder that still holds an older run's
    ``checkpoint_epoch=10.pt`` must resume from its own ``checkpoint_epoch=3.pt``.

    Raises:
        FileNotFoundError: no checkpoint to resume from, with what to do instead.
    """
    found = sorted(glob.glob(os.path.join(glob.escape(ckpt_dir), pattern)), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(
            f"--resume true was given but {ckpt_dir} holds no {pattern!r} checkpoint to resume from; "
            "train without --resume first (a checkpoint is written after every epoch)."
        )
    return found[-1]


class ResumeTraining:
    """``--resume``: load the newest interval checkpoint (network, optimizer, trainer, LR schedule, best score) into
    the training run before it starts (``initialize``), with MONAI's ``CheckpointLoader``; nothing when the switch is
    off. :meth:`run` then runs the trainer, or, for a run that had already finished, says so and trains nothing.

    * A finished run (its checkpoint at ``max_epochs``) is complete: ignite would start a finished engine anew from
      epoch 1, over the finished model and with a fresh schedule; :meth:`run` logs that the run is complete instead.
    * A larger ``--max_epochs`` continues from the checkpoint's epoch to the new end, and the LR schedule is stretched
      to the new length (its ``t_total``, which the checkpoint would otherwise restore to the old one, is the new
      run's): the learning rate continues from where the longer schedule is at the checkpoint's step.

    Args:
        resume: the switch, as the config has it (read with :func:`scripts.settings.is_on`).
        ckpt_dir: the folder of the interval checkpoints.
        load_dict: what the checkpoint holds (``train#checkpoint_dict``).
        map_location: where to load the tensors (the training device).
    """

    def __init__(self, resume, ckpt_dir: str, load_dict: dict, map_location=None) -> None:
        self.enabled = is_on(resume)
        self.load_dict = load_dict
        self.checkpoint = latest_checkpoint(ckpt_dir) if self.enabled else None
        self.loader = (
            CheckpointLoader(load_path=self.checkpoint, load_dict=load_dict, map_location=map_location)
            if self.checkpoint
            else None
        )

    def __call__(self, engine: Engine) -> None:
        if self.loader is None:
            return
        # the schedule's length is the new run's (``max_epochs`` may have been raised): keep it over the checkpoint's
        lengths = {k: obj.t_total for k, obj in self.load_dict.items() if hasattr(obj, "t_total")}
        self.loader(engine)
        for key, t_total in lengths.items():
            self.load_dict[key].t_total = t_total

    def run(self, engine: Engine) -> None:
        """Run ``engine`` (the trainer), unless a resumed run had already finished all of its epochs."""
        state = engine.state
        if self.loader is not None and state.max_epochs is not None and state.epoch >= state.max_epochs:
            engine.logger.info(
                f"the run in {os.path.dirname(str(self.checkpoint))} is complete ({state.epoch} of {state.max_epochs}"
                " epochs): nothing to train. Raise --max_epochs to train it further."
            )
            return
        engine.run()
