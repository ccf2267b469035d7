"""The model's intensity normalisation (``intensity``: ``"range"`` or ``"histogram"``) is a setting of the model: it is
written with the weights by training, read back by inference, and a model.json written before it existed means
``"range"``. Histogram equalisation is what brings the lungs of two hospitals to similar grey levels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, REPO
from monai.bundle import ConfigParser
from PIL import Image

from scripts.settings import trained_settings, write_model_settings
from scripts.transforms.image import NormaliseModelIntensityd

KAGGLE = REPO.parent / "shared" / "data" / "kaggle-lungs-512"


def test_range_leaves_the_image_and_histogram_equalises_it():
    """``"range"`` is the identity on an image scaled to [0, 1]; ``"histogram"`` (typed in any case) spreads an image
    crowded at the dark end over [0, 1] (its median from 0.25 to about the middle) and keeps the order of its grey
    levels."""
    image = torch.linspace(0, 1, 64 * 64).reshape(1, 64, 64) ** 2  # most pixels dark
    kept = NormaliseModelIntensityd("image", intensity="range")({"image": image})["image"]
    assert torch.equal(torch.as_tensor(kept), image)
    equalised = torch.as_tensor(NormaliseModelIntensityd("image", intensity=" Histogram")({"image": image})["image"])
    assert float(image.median()) == pytest.approx(0.25, abs=0.01) and float(equalised.median()) > 0.45
    assert float(equalised.min()) == 0 and float(equalised.max()) == 1
    assert bool((equalised.flatten().diff() >= -1e-6).all())  # monotone: the order of grey levels is kept


def test_an_unknown_normalisation_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="zscore.*range, histogram"):
        NormaliseModelIntensityd("image", intensity="zscore")
    with pytest.raises(ValueError, match="zscore"):
        write_model_settings(
            __file__, {"image_size": [8, 8], "crop_padding": True, "intensity": "zscore", "num_classes": 2}
        )


def test_the_setting_travels_with_the_weights_and_old_files_mean_range(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    write_model_settings(
        str(weights), {"image_size": [8, 8], "crop_padding": "false", "intensity": "HISTOGRAM", "num_classes": 2}
    )
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["intensity"] == "histogram" and trained_settings(str(weights))["intensity"] == "histogram"
    # a model.json of bundle 0.10 or earlier: the images were scaled to their range, nothing more
    del written["intensity"]
    (tmp_path / "model.json").write_text(json.dumps(written))
    assert trained_settings(str(weights))["intensity"] == "range"
    # a file that names an unknown normalisation stops the run with its path
    (tmp_path / "model.json").write_text(json.dumps({**written, "intensity": "clahe"}))
    with pytest.raises(ValueError, match=r"model\.json: unknown intensity 'clahe'"):
        trained_settings(str(weights))
    # weights with no model.json: the recipe's default
    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert trained_settings(str(tmp_path / "other.pt"))["intensity"] == recipe["intensity"] == "histogram"
    tutorial = json.loads((BUNDLE / "configs" / "recipe_tutorial.json").read_text())
    assert tutorial["intensity"] == "range"  # the tutorial scaled to [0, 1] and did nothing more


def network_input(folder: Path, intensity: str) -> tuple[torch.Tensor, dict]:
    """The network's input for the one image in ``folder/in`` as inference.json prepares it for a model trained with
    ``intensity``, and the batch run's fingerprint."""
    weights = folder / f"{intensity}.pt"
    weights.write_bytes(b"weights")
    settings = {"image_size": [64, 64], "crop_padding": False, "intensity": intensity, "num_classes": 2}
    write_model_settings(str(weights), settings)
    parser = ConfigParser()
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(folder / "in"), "ckpt_path": str(weights)})
    parser.update({"output_dir": str(folder / f"out_{intensity}"), "write_overlay": False})
    item = parser.get_parsed_content("preprocessing")({"image": str(folder / "in" / "chest.png")})
    return torch.as_tensor(item["image"]), parser.get_parsed_content("batch").settings


def test_inference_normalises_as_the_model_was_trained(tmp_path):
    """inference.json reads ``intensity`` from the model's model.json: the network's input is equalised exactly when
    the model was trained so, and the batch run's fingerprint names it (a model trained otherwise segments again)."""
    from monai.transforms import HistogramNormalize

    (tmp_path / "in").mkdir()
    rows = np.linspace(0, 1, 200)[:, None] ** 3 * np.ones((1, 160))
    Image.fromarray((rows * 4000 + 100).astype(np.uint16)).save(tmp_path / "in" / "chest.png")
    scaled, range_run = network_input(tmp_path, "range")
    equalised, histogram_run = network_input(tmp_path, "histogram")
    assert scaled.shape[-2:] == equalised.shape[-2:] == (64, 64)
    assert float(scaled.min()) == 0 and float(scaled.median()) < 0.2  # scaled to the image's range, no more
    expected = torch.as_tensor(HistogramNormalize(num_bins=256, min=0, max=1)(scaled))
    assert torch.allclose(equalised, expected, atol=1e-6) and float(equalised.median()) > 0.4
    assert (range_run["intensity"], histogram_run["intensity"]) == ("range", "histogram")


def lung_median(image: Path, mask: Path, intensity: str) -> float:
    """The median grey level inside the lungs after the training pipeline's scaling and ``intensity``."""
    grey = np.asarray(Image.open(image).convert("F"))
    grey = (grey - grey.min()) / (grey.max() - grey.min())
    normalised = NormaliseModelIntensityd("image", intensity=intensity)({"image": torch.from_numpy(grey)[None]})
    lungs = np.asarray(Image.open(mask)) > 0
    return float(np.median(np.asarray(normalised["image"])[0][lungs]))


def test_histogram_equalisation_brings_two_hospitals_lungs_together():
    """On real radiographs (skipped without ``../shared``): Shenzhen's lungs are far brighter in their image's grey
    range than Montgomery's; equalised, the two medians are at most half as far apart (measured: 0.60 against 0.27,
    then 0.34 against 0.27, in benchmarks/README.md)."""
    if not (KAGGLE / "images").is_dir():
        pytest.skip(f"real radiographs not found at {KAGGLE}")
    names = {
        source: sorted(p.name for p in (KAGGLE / "images").glob(f"{source}_*.png"))[:8]
        for source in ("CHNCXR", "MCUCXR")
    }
    gaps = {}
    for intensity in ("range", "histogram"):
        medians = {
            source: np.median([lung_median(KAGGLE / "images" / n, KAGGLE / "masks" / n, intensity) for n in found])
            for source, found in names.items()
        }
        gaps[intensity] = medians["CHNCXR"] - medians["MCUCXR"]
    assert gaps["range"] > 0.2, gaps
    assert abs(gaps["histogram"]) < gaps["range"] / 2, gaps


def test_training_takes_the_setting_as_typed():
    """``--intensity RANGE`` on the command line trains on range-scaled images and writes ``"range"`` for the model."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "intensity": "RANGE"})
    normalise = [t for t in parser.get_parsed_content("train#deterministic_transforms") if hasattr(t, "intensity")]
    assert [t.intensity for t in normalise] == ["range"]
    assert parser.get_parsed_content("train#model_settings")["intensity"] == "RANGE"  # written as "range", see above
