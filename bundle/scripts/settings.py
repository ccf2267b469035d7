"""The settings the configs read: on/off switches as users type them, and the trained model's own settings.

* :func:`is_on` (from :mod:`scripts.io.switches`), the one reader of every on/off option of every config:
  ``monai.bundle run ... --write_seg false`` passes the string ``"false"``, which Python would take as true. The
  components that take a switch read it with it; no config reads one in an expression. :func:`amp_enabled` reads
  the engines' ``amp`` (``"auto"``: where CUDA is).
* :func:`trained_settings`: the input size, padding crop, intensity normalisation and number of classes a model was
  trained with travel with its weights, in ``model.json`` beside ``model.pt`` (written by training,
  :func:`write_model_settings`), so that inference and evaluation run a model on the input it was trained on without
  being told. Weights without that file get the recipe of ``configs/train.json``, the one place where its defaults
  are written; a ``model.json`` written before the bundle recorded the intensity normalisation (0.10 and earlier)
  means ``"range"``, the only one there was.
* ``model.json`` also records the SHA-256 of its weights file, which the bundle's loader checks
  (:func:`scripts.io.weights.load_weights`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .io.files import atomic_write
from .io.switches import OFF_WORDS, ON_WORDS, is_on
from .io.weights import file_sha256, settings_file

__all__ = [
    "is_on",
    "amp_enabled",
    "ON_WORDS",
    "OFF_WORDS",
    "MODEL_SETTINGS",
    "INTENSITY_NORMALISATIONS",
    "image_size_setting",
    "intensity_setting",
    "trained_settings",
    "write_model_settings",
]

# the training recipe of this bundle, beside the scripts folder wherever the bundle is copied
_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train.json"
# what a model needs at inference that its state dict does not say
MODEL_SETTINGS = ("image_size", "crop_padding", "intensity", "num_classes")
# how a model's input intensities may be normalised (scripts.transforms.image.NormaliseModelIntensityd)
INTENSITY_NORMALISATIONS = ("range", "histogram")
# what a model.json that does not name a setting means: the bundle wrote it before the setting existed
_BEFORE_RECORDED = {"intensity": "range"}


def amp_enabled(amp: bool | int | str | None) -> bool:
    """The engines' ``amp`` switch: ``"auto"`` (the configs' default) is on where CUDA is, anything else is read with
    :func:`is_on`. MONAI's engines take a bool: the word ``"false"`` would be true to them."""
    if str(amp).strip().lower() == "auto":
        import torch  # only here: reading a model's settings needs no torch

        return torch.cuda.is_available()
    return is_on(amp)


def write_model_settings(weights: str, settings: dict) -> str:
    """Write the settings the model in ``weights`` was trained with (:data:`MODEL_SETTINGS`) and the file's SHA-256,
    atomically, beside it."""
    values = {key: settings[key] for key in MODEL_SETTINGS}
    values["image_size"] = image_size_setting(values["image_size"])
    values["crop_padding"] = is_on(values["crop_padding"])
    values["intensity"] = intensity_setting(values["intensity"])
    values["sha256"] = file_sha256(weights)
    text = json.dumps(values, indent=4) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(settings_file(weights), write)


def image_size_setting(value: int | str | Sequence[int | str]) -> list[int]:
    """A model's input ``image_size`` as ``[x, y]``: one number is a square, as users type it on the command line
    (``--image_size 224``; MONAI's ``Resized`` needs a size per dimension), or two (``--image_size "[224,256]"``).

    Raises:
        ValueError: anything but one or two positive whole numbers, with the value as given.
    """
    sizes = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if isinstance(value, str) and "," in value:
        sizes = value.strip().strip("[]()").split(",")
    try:
        numbers = [int(str(size).strip()) for size in sizes]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2 or min(numbers) < 1:
        raise ValueError(
            f'image_size must be one positive whole number (a square) or two, e.g. 224 or "[224,256]"; '
            f"got {value!r}."
        )
    return numbers


def intensity_setting(value: str) -> str:
    """A model's ``intensity`` normalisation as the transforms name it (lower case), refused when unknown."""
    name = str(value).strip().lower()
    if name not in INTENSITY_NORMALISATIONS:
        raise ValueError(f"unknown intensity {value!r}; use one of {', '.join(INTENSITY_NORMALISATIONS)}.")
    return name


def trained_settings(weights: str) -> dict:
    """The settings of the model in ``weights``: from its ``model.json`` when training wrote one, else the recipe's
    defaults from this bundle's ``configs/train.json`` (weights trained elsewhere, or before the bundle wrote the
    file).

    Args:
        weights: the weights file (``--ckpt_path``).

    Returns:
        ``{"image_size": [x, y], "crop_padding": bool, "intensity": str, "num_classes": int}``.
    """
    path = settings_file(weights)
    source = path if os.path.isfile(path) else str(_RECIPE)
    with open(source) as f:
        found = json.load(f)
    if source == path:
        found = {**_BEFORE_RECORDED, **found}
    missing = [key for key in MODEL_SETTINGS if key not in found]
    if missing:
        raise ValueError(f"{source} does not say the model's {', '.join(missing)}")
    try:
        intensity = intensity_setting(found["intensity"])
        image_size = image_size_setting(found["image_size"])
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return {
        "image_size": image_size,
        "crop_padding": is_on(found["crop_padding"]),
        "intensity": intensity,
        "num_classes": int(found["num_classes"]),
    }
