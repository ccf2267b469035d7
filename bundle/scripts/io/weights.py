"""Weights files: where a model's settings are (:func:`settings_file`), their checksum, and loading them for inference
and evaluation (:func:`load_weights`); the settings, training and batch runs import them from here.

``model.json`` beside ``model.pt`` records the SHA-256 of the weights file
(:func:`scripts.settings.write_model_settings`); :func:`load_weights` checks it first, so a truncated download, a Git
LFS pointer or weights swapped without their settings stop the run with a message instead of segmenting with the
wrong model."""

from __future__ import annotations

import hashlib
import json
import os

from .errors import RunFault, describe_error

__all__ = ["settings_file", "file_sha256", "verify_weights", "load_weights"]


def settings_file(weights: str) -> str:
    """The file of a model's settings: ``models/model.pt`` -> ``models/model.json`` (also for ``model.ts``)."""
    return os.path.splitext(str(weights))[0] + ".json"


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(weights: str) -> None:
    """Check ``weights`` against the SHA-256 its ``model.json`` records (weights without one are not checked).

    Raises:
        ValueError: the file is not the one its settings were written for, naming both checksums and what to do.
    """
    path = settings_file(weights)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        expected = json.load(f).get("sha256")
    if not expected:
        return
    found = file_sha256(weights)
    if found != expected:
        raise ValueError(
            f"{weights} has SHA-256 {found}, but {path} was written for a file with SHA-256 {expected}: the weights "
            "are damaged or not the ones their settings describe (a partial copy, a Git LFS pointer, or another "
            "model's file). Restore the file (the shipped models/model.pt: git checkout -- models/model.pt), or give "
            "the weights with their own settings file."
        )


def load_weights(loader, engine) -> None:
    """Load the weights with MONAI's ``CheckpointLoader`` (``loader(engine)``), as a fault of the run when they are
    missing or do not fit the network: a :class:`~scripts.io.errors.RunFault` that says what to do (exit
    status 1), not a traceback.

    Args:
        loader: a ``monai.handlers.CheckpointLoader``; ``None`` for a network that carries its weights (an exported
            TorchScript model, ``configs/inference_exported.json``).
        engine: the engine whose network receives the weights.
    """
    if loader is None:
        return
    path = str(loader.load_path)
    if not os.path.isfile(path):
        raise RunFault(
            f"no weights at {path}: pass --ckpt_path /path/to/model.pt (training writes models/model_trained.pt: "
            "python -m monai.bundle run training --config_file configs/train.json)"
        )
    try:
        verify_weights(path)
    except ValueError as exc:
        raise RunFault(str(exc)) from exc
    try:
        loader(engine)
    except Exception as exc:
        raise RunFault(
            f"the weights in {path} cannot be loaded into the network ({describe_error(exc)}); check that they were "
            "trained with this bundle's network_def and num_classes"
        ) from exc
