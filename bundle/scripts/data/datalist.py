"""Build MONAI datalists (``{"training": [{"image", "label"}, ...], ...}``) from the folder layouts users have.

Accepted inputs for ``dataset_dir``:

* the Kaggle "Chest Xray Masks and Labels" layout (``CXR_png/`` + ``masks/``, possibly under ``Lung Segmentation/``):
  Shenzhen masks are named ``<image>_mask.png``, Montgomery masks have the image's own name; all 704 pairs are found,
  images without a mask (and masks without an image) are listed as unpaired, the ``test/`` folder as unlabelled;
* plain ``images/`` + ``masks/`` (or ``labels/``) folders with the same file names (``_mask`` suffix also accepted);
* a datalist JSON file in MONAI's decathlon format (paths relative to the file); a ``validation`` list in it is kept,
  otherwise one is split off ``training``;
* nothing (``""``/``None``): the synthetic default set is generated (see :mod:`scripts.data.synthetic`).

A split file (``split_file``: a decathlon datalist whose paths are relative to ``dataset_dir``) fixes which case goes
where; the bundle keeps the one its release model was trained with (``configs/datalist_kaggle_lungs_512.json``).

Splits are seeded and stable: a case's split depends only on the seed and the sorted list of cases.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from monai.data import load_decathlon_datalist

from ..io.files import IMAGE_EXTENSIONS, image_stem
from ..process_group import on_rank_zero_first
from .synthetic import generate_synthetic_dataset

__all__ = ["find_pairs", "split_cases", "prepare_datalist", "training_datalist", "evaluation_cases"]

logger = logging.getLogger(__name__)
_IMAGE_DIRS = ("CXR_png", "images", "image", "imgs")
_MASK_DIRS = ("masks", "mask", "labels", "label")
_MASK_SUFFIXES = ("_mask", "")


def _image_files(folder: str) -> list[str]:
    return (
        sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if os.path.isdir(folder)
        else []
    )


def _find_layout_root(dataset_dir: str) -> tuple[str, str]:
    """Return ``(image_dir, mask_dir)``, looking one level down too (Kaggle unpacks to ``Lung Segmentation/``)."""
    candidates = [dataset_dir] + sorted(
        os.path.join(dataset_dir, d) for d in os.listdir(dataset_dir) if os.path.isdir(os.path.join(dataset_dir, d))
    )
    for root in candidates:
        image_dir = next((os.path.join(root, d) for d in _IMAGE_DIRS if os.path.isdir(os.path.join(root, d))), None)
        mask_dir = next((os.path.join(root, d) for d in _MASK_DIRS if os.path.isdir(os.path.join(root, d))), None)
        if image_dir and mask_dir:
            return image_dir, mask_dir
    raise FileNotFoundError(
        f"{dataset_dir}: no image and mask folders found. Expected the Kaggle layout (CXR_png/ + masks/), "
        "images/ + masks/ with the same file names, or a datalist JSON file."
    )


def find_pairs(dataset_dir: str) -> dict[str, list]:
    """Pair images with their masks in ``dataset_dir``.

    Returns:
        ``{"pairs": [{"image", "label"}], "unpaired_images": [...], "unpaired_masks": [...], "unlabelled": [...]}``
        with absolute paths, sorted by image name. ``unlabelled`` holds the Kaggle ``test/`` images.
    """
    image_dir, mask_dir = _find_layout_root(dataset_dir)
    masks = {image_stem(f): f for f in _image_files(mask_dir)}
    used_masks: set[str] = set()
    pairs, unpaired_images = [], []
    for name in _image_files(image_dir):
        stem = image_stem(name)
        mask = next((masks[stem + s] for s in _MASK_SUFFIXES if stem + s in masks), None)
        if mask is None:
            unpaired_images.append(os.path.join(image_dir, name))
            continue
        used_masks.add(mask)
        pairs.append({"image": os.path.join(image_dir, name), "label": os.path.join(mask_dir, mask)})
    unpaired_masks = [os.path.join(mask_dir, m) for m in sorted(set(masks.values()) - used_masks)]
    test_dir = os.path.join(os.path.dirname(image_dir), "test")
    unlabelled = [os.path.join(test_dir, f) for f in _image_files(test_dir)]
    return {
        "pairs": pairs,
        "unpaired_images": unpaired_images,
        "unpaired_masks": unpaired_masks,
        "unlabelled": unlabelled,
    }


def split_cases(cases: list, val_fraction: float = 0.2, test_fraction: float = 0.1, seed: int = 0) -> dict[str, list]:
    """Shuffle ``cases`` with ``seed`` and cut them into training, validation and test lists.

    At least one case goes to validation whenever there are two or more cases and ``val_fraction > 0``.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"invalid split fractions: validation {val_fraction}, test {test_fraction}.")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = max(1, round(len(cases) * val_fraction)) if val_fraction > 0 and len(cases) > 1 else 0
    n_test = round(len(cases) * test_fraction)
    shuffled = [cases[i] for i in order]
    return {
        "validation": shuffled[:n_val],
        "test": shuffled[n_val : n_val + n_test],
        "training": shuffled[n_val + n_test :],
    }


def _from_datalist_file(path: str, val_fraction: float, seed: int) -> dict[str, list]:
    with open(path) as f:
        keys = json.load(f).keys()
    lists = {
        k: load_decathlon_datalist(path, is_segmentation=True, data_list_key=k)
        for k in keys
        if k in ("training", "validation", "test")
    }
    if "training" not in lists:
        raise ValueError(f"{path}: a datalist needs a 'training' list of {{'image', 'label'}} items.")
    if "validation" not in lists:
        split = split_cases(lists["training"], val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        lists["training"], lists["validation"] = split["training"], split["validation"]
    lists.setdefault("test", [])
    return lists


def _from_split_file(split_file: str, dataset_dir: str) -> dict[str, list]:
    """The lists of ``split_file``, their paths relative to ``dataset_dir``; every file must exist."""
    with open(split_file) as f:
        keys = [k for k in json.load(f) if k in ("training", "validation", "test")]
    lists = {k: load_decathlon_datalist(split_file, True, k, base_dir=dataset_dir) for k in keys}
    missing = [c["image"] for cases in lists.values() for c in cases if not os.path.isfile(c["image"])]
    if missing:
        raise FileNotFoundError(
            f"{split_file}: {len(missing)} of its cases are not in {dataset_dir} (first: {missing[0]}); "
            "give the data folder the split was made for as --dataset_dir."
        )
    return {k: lists.get(k, []) for k in ("training", "validation", "test")}


def prepare_datalist(
    dataset_dir: str | None,
    output_file: str | None = None,
    synthetic_dir: str = "./data/synthetic",
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
    split_file: str | None = None,
) -> dict[str, list]:
    """Make the datalist the training and evaluation configs use, and optionally write it as JSON.

    Args:
        dataset_dir: a data folder, a datalist JSON file, or ``""``/``None`` for the synthetic default set.
        output_file: where to write the datalist JSON (folders created); ``None`` to skip.
        synthetic_dir: where the synthetic default set is generated when ``dataset_dir`` is empty.
        val_fraction: fraction of labelled cases for validation.
        test_fraction: fraction of labelled cases held out for testing (``evaluate.json``).
        seed: split seed.
        split_file: a datalist JSON whose paths are relative to ``dataset_dir`` (a folder): its lists are used
            instead of a seeded split. Ignored without ``dataset_dir``.

    Returns:
        ``{"training", "validation", "test", "unpaired_images", "unpaired_masks", "unlabelled"}`` lists.
    """
    if split_file and not (dataset_dir and os.path.isdir(os.path.expanduser(str(dataset_dir)))):
        logger.warning(
            "split_file %s is ignored: it names cases of a data folder, and dataset_dir is %s",
            split_file,
            f"the datalist file {dataset_dir}" if dataset_dir else "empty (the synthetic default set)",
        )
        split_file = None
    if not dataset_dir:
        dataset_dir = generate_synthetic_dataset(synthetic_dir)
    dataset_dir = os.path.abspath(os.path.expanduser(str(dataset_dir)))
    if split_file and os.path.isdir(dataset_dir):
        datalist = _from_split_file(os.path.abspath(split_file), dataset_dir)
        datalist.update(unpaired_images=[], unpaired_masks=[], unlabelled=[])
    elif os.path.isfile(dataset_dir):
        datalist = _from_datalist_file(dataset_dir, val_fraction, seed)
        datalist.update(unpaired_images=[], unpaired_masks=[], unlabelled=[])
    elif os.path.isdir(dataset_dir):
        found = find_pairs(dataset_dir)
        if not found["pairs"]:
            raise FileNotFoundError(f"{dataset_dir}: no image/mask pairs found.")
        datalist = split_cases(found["pairs"], val_fraction, test_fraction, seed)
        datalist.update({k: v for k, v in found.items() if k != "pairs"})
    else:
        raise FileNotFoundError(f"dataset_dir does not exist: {dataset_dir}")
    logger.info(
        "datalist from %s: %d training, %d validation, %d test; %d images without mask, %d masks without image, "
        "%d unlabelled",
        dataset_dir,
        *(
            len(datalist[k])
            for k in ("training", "validation", "test", "unpaired_images", "unpaired_masks", "unlabelled")
        ),
    )
    for path in datalist["unpaired_images"][:20] + datalist["unpaired_masks"][:20]:
        logger.info("unpaired: %s", path)
    if output_file:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        with open(output_file, "w") as f:
            json.dump(datalist, f, indent=2)
    return datalist


_SPLIT_OPTIONS = ("file", "val_fraction", "test_fraction", "seed")


def _split_arguments(split: dict | None, also: tuple[str, ...] = ()) -> dict:
    """:func:`prepare_datalist`'s split arguments from a config's ``split`` group (the options it leaves out keep
    their defaults)."""
    if split is not None and not isinstance(split, dict):
        raise ValueError(
            f"split is a group of options, not {split!r}: set one of them, e.g. --split#file <split.json> or "
            "--split#val_fraction 0.1"
        )
    split = dict(split or {})
    unknown = sorted(set(split) - {*_SPLIT_OPTIONS, *also})
    if unknown:
        raise ValueError(f"split has no option {', '.join(unknown)}; its options: {', '.join(_SPLIT_OPTIONS + also)}")
    arguments = {"split_file": split.get("file") or None}
    for option, kind in (("val_fraction", float), ("test_fraction", float), ("seed", int)):
        if option in split:
            arguments[option] = kind(split[option])
    return arguments


def training_datalist(
    dataset_dir: str | None, output_file: str | None = None, synthetic_dir: str = "./data/synthetic", split=None
) -> dict[str, list]:
    """:func:`prepare_datalist` with ``train.json``'s ``split`` group (``file``, ``val_fraction``, ``test_fraction``,
    ``seed``), on rank 0 first: it may generate the synthetic set and writes the datalist file, which the other ranks
    then read finished."""
    return on_rank_zero_first(prepare_datalist, dataset_dir, output_file, synthetic_dir, **_split_arguments(split))


def evaluation_cases(dataset_dir: str | None, synthetic_dir: str = "./data/synthetic", split=None) -> list:
    """The ``{"image", "label"}`` cases to evaluate, on rank 0 first (as :func:`training_datalist`).

    Args:
        dataset_dir: a folder with images and masks (``images/`` + ``masks/``, or the Kaggle layout), a datalist JSON
            file, or empty for the held-out test split of the synthetic default set.
        synthetic_dir: where the synthetic default set is (generated when missing).
        split: ``evaluate.json``'s ``split`` group: ``part``, ``"all"`` (the default) for every labelled case of a
            folder (every list of a datalist file), or one of ``"training"``, ``"validation"``, ``"test"``: the same
            split as training, given the same ``file`` or ``val_fraction``, ``test_fraction`` and ``seed``.
    """
    # ``--split validation`` on the command line replaces the group with its part: take it as that
    split = {"part": split} if isinstance(split, str) else dict(split or {})
    part = split.pop("part", "all")
    arguments = _split_arguments(split)
    return on_rank_zero_first(_evaluation_cases, dataset_dir, synthetic_dir, part, arguments)


def _evaluation_cases(dataset_dir: str | None, synthetic_dir: str, part: str, arguments: dict) -> list:
    if not dataset_dir:
        cases = prepare_datalist(None, synthetic_dir=synthetic_dir)["test"]
    elif part == "all" and os.path.isdir(str(dataset_dir)) and not arguments["split_file"]:
        cases = find_pairs(str(dataset_dir))["pairs"]
    elif part == "all":
        lists = prepare_datalist(dataset_dir, **arguments)
        cases = lists["training"] + lists["validation"] + lists["test"]
    else:
        cases = prepare_datalist(dataset_dir, **arguments)[part]
    if not cases:
        raise ValueError(f"no labelled cases to evaluate in {dataset_dir or synthetic_dir} (split part {part!r})")
    logger.info("evaluating %d cases", len(cases))
    return cases
