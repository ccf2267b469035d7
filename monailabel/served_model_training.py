"""MONAI Label's ``/train`` for this bundle: it writes the model MONAI Label serves, and keeps the shipped weights.

``configs/train.json`` writes its model as ``models/model_trained.pt``, so that training from the command line never
replaces the weights shipped in ``models/model.pt``. MONAI Label serves ``models/model.pt`` (and reloads it when it
changes), so a MONAI Label ``/train``, which a user asks for to update the served model, writes there: this task
overrides ``model_file`` through MONAI Label's own hook for that (``BundleTrainTask._update_overrides``). Before the
first such training replaces the shipped release, it is copied to ``models/model_release.pt`` (with its settings),
which MONAI Label then offers as a ``model_filename`` to infer with or to train from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

SERVED = "model.pt"
RELEASE_COPY = "model_release.pt"


def _settings(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def keep_release(models_dir: str) -> str | None:
    """Copy the shipped weights (``model.pt`` whose ``model.json`` names a ``release``) to ``model_release.pt``,
    unless that copy holds them already (same SHA-256); returns the copy's path, or ``None`` when there is no release
    to keep."""
    served, settings = os.path.join(models_dir, SERVED), os.path.join(models_dir, "model.json")
    copy = os.path.join(models_dir, RELEASE_COPY)
    copy_settings = os.path.splitext(copy)[0] + ".json"
    release = _settings(settings)
    if not (os.path.isfile(served) and release.get("release")):
        return None
    if os.path.isfile(copy) and _settings(copy_settings).get("sha256") == release.get("sha256"):
        return None
    shutil.copy2(served, copy + ".tmp")
    shutil.copy2(settings, copy_settings)
    os.replace(copy + ".tmp", copy)  # the weights last: a copy that exists is complete
    logger.info(f"the shipped weights are kept as {copy} before training replaces {served}")
    return copy


class ServedModelTrainTask(BundleTrainTask):
    """``BundleTrainTask`` whose training writes ``models/model.pt``, the file MONAI Label serves."""

    def _update_overrides(self, overrides):
        keep_release(os.path.join(self.bundle_path, "models"))
        overrides["model_file"] = SERVED
        return overrides


def served_model_trainers(app) -> dict:
    """The trainers of a ``monaibundle`` app (its ``init_trainers``), one :class:`ServedModelTrainTask` per bundle."""
    if strtobool(app.conf.get("skip_trainers", "false")):
        return {}
    trainers = {}
    for name, path in app.models.items():
        task = ServedModelTrainTask(path, app.conf)
        if task.is_valid():
            logger.info(f"+++ Adding Trainer:: {name} => {task}")
            trainers[name] = task
    return trainers
