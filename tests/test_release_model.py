"""The weights shipped in ``bundle/models/``: they load through the bundle's own loader with their checksum, segment
real radiographs with no training, and training never replaces them.

The tests of the shipped model itself run when ``configs/metadata.json`` declares release weights
(``release_weights``), and then fail if the files are missing or differ; the others run always.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, REPO, dice, read_masks, run_bundle
from PIL import Image

KAGGLE = REPO.parent / "shared" / "data" / "kaggle-lungs-512"
METADATA = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
RELEASE = METADATA.get("release_weights")

needs_release = pytest.mark.skipif(not RELEASE, reason="configs/metadata.json declares no release weights")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_release
def test_the_shipped_weights_are_the_ones_metadata_and_model_json_name():
    weights = BUNDLE / RELEASE["path"]
    settings = json.loads(weights.with_suffix(".json").read_text())
    assert sha256(weights) == RELEASE["sha256"] == settings["sha256"]
    assert settings["release"] == RELEASE["release"] and RELEASE["release"] in METADATA["changelog"]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {getattr(torch, RELEASE["dtype"])}
    assert weights.stat().st_size < 50e6  # half precision: about 37 MB, not 75


@needs_release
@pytest.mark.slow
def test_a_fresh_bundle_segments_real_radiographs_with_the_shipped_model(tmp_path):
    """``inference.json`` as it comes, with no weights given and nothing trained: the shipped model, checksum
    verified, gives lung masks that match the reference masks of real radiographs."""
    if not (KAGGLE / "images").is_dir():
        pytest.skip(f"real radiographs not found at {KAGGLE}")
    split = json.loads((BUNDLE / "configs" / "datalist_kaggle_lungs_512.json").read_text())
    # validation cases of the release model (never trained on), both sources
    names = [Path(c["image"]).name for c in split["validation"]]
    chosen = [n for n in names if n.startswith("CHNCXR")][:3] + [n for n in names if n.startswith("MCUCXR")][:2]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in chosen:
        shutil.copy(KAGGLE / "images" / name, inputs / name)
    proc = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(inputs),
        "--output_dir", str(tmp_path / "out"), "--num_workers", "0", "--write_seg", "false",
    )  # fmt: skip
    masks = read_masks(tmp_path / "out")
    assert len(masks) == len(chosen), proc.stdout[-3000:]
    for name in chosen:
        truth = np.asarray(Image.open(KAGGLE / "masks" / name)) > 0
        mask = next(m for file, m in masks.items() if file.startswith(f"{Path(name).stem}_"))
        assert mask.shape == truth.shape
        assert dice(mask, truth) >= 0.9, (name, dice(mask, truth))


@pytest.mark.slow
def test_damaged_weights_stop_the_run_with_the_checksum_named(trained_model, tmp_path):
    weights = tmp_path / "model.pt"
    shutil.copy(trained_model["weights"], weights)
    shutil.copy(trained_model["weights"].with_suffix(".json"), tmp_path / "model.json")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a tensor: torch.load would not notice
    weights.write_bytes(bytes(data))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(inputs / "a.png")
    proc = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(inputs), "--ckpt_path", str(weights),
        "--output_dir", str(tmp_path / "out"), "--num_workers", "0", expect=1,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert f"{weights} has SHA-256" in output and "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_training_from_the_bundle_folder_leaves_the_shipped_weights_untouched(tmp_path):
    """The README's training command, run in a copy of the bundle (its synthetic default data), writes its model as
    ``models/model_trained.pt``; ``models/model.pt`` and ``model.json`` stay as shipped."""
    bundle = tmp_path / "bundle"
    generated = {"eval", "data", "cache", "outputs"}  # what runs write at the bundle's top level

    def ignored(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or (Path(folder) == BUNDLE and n in generated)}

    shutil.copytree(BUNDLE, bundle, ignore=ignored)
    shipped = bundle / "models" / "model.pt"
    if not shipped.is_file():  # before the first release: stand-in weights in the shipped place
        from scripts.network import VGG16FCN
        from scripts.settings import write_model_settings

        shipped.parent.mkdir(exist_ok=True)
        torch.save(VGG16FCN().state_dict(), shipped)
        write_model_settings(
            str(shipped), {"image_size": [128, 128], "crop_padding": True, "intensity": "histogram", "num_classes": 2}
        )
    shipped_files = ("model.pt", "model.json")  # what an earlier training left in models/ may change
    before = {name: sha256(bundle / "models" / name) for name in shipped_files}
    run_bundle(
        "run", "training", "--config_file", "configs/train.json", "--max_epochs", "1", "--image_size", "[64,64]",
        "--num_workers", "0", cwd=bundle,
    )  # fmt: skip
    after = {p.name: sha256(p) for p in (bundle / "models").iterdir()}
    assert {name: after.get(name) for name in before} == before
    assert {"model_trained.pt", "model_trained.json"} <= set(after)
