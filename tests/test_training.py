"""Real `monai.bundle run training` runs: weights written, Dice well above chance, resume from the last checkpoint."""

import json
import re

import pytest
import torch
from conftest import BUNDLE, train_tiny_model
from PIL import Image

from scripts.network import VGG16FCN


def best_val_dice(log: str) -> float:
    values = [float(v) for v in re.findall(r"val_mean_dice best value: ([0-9.]+)", log)]
    assert values, f"no validation Dice in the log:\n{log[-3000:]}"
    return values[-1]


@pytest.mark.slow
def test_training_writes_a_plain_state_dict_and_learns(trained_model):
    model_file = trained_model["weights"]
    assert model_file.is_file()
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    VGG16FCN().load_state_dict(state)  # plain state dict of the bundle's network, strict
    # an all-lung or all-background guess scores < 0.3 on these images; a learned model scores far above
    assert best_val_dice(trained_model["log"]) > 0.8
    assert list(trained_model["models"].glob("checkpoint_epoch=*.pt"))
    # the curves for people without TensorBoard: a picture of the loss and the validation Dice per epoch
    with Image.open(trained_model["eval"] / "training_curves.png") as curves:
        assert curves.format == "PNG" and curves.width >= 600
        assert len(set(curves.convert("RGB").getdata())) > 50  # drawn, not blank


@pytest.mark.slow
def test_the_model_settings_travel_with_the_weights(trained_model):
    """Training writes the settings the model was trained with beside its weights; inference reads them from there,
    so the model runs at its own size without being told (``trained_model`` was trained with ``--image_size 96``, one
    number for a square; the recipe's default is 128 x 128)."""
    from scripts.io.weights import file_sha256
    from scripts.settings import trained_settings

    written = json.loads((trained_model["models"] / "model_trained.json").read_text())
    assert written.pop("sha256") == file_sha256(str(trained_model["weights"]))
    assert written == {"image_size": [96, 96], "crop_padding": True, "intensity": "histogram", "num_classes": 2}
    assert trained_settings(str(trained_model["weights"])) == written
    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert recipe["image_size"] != written["image_size"]  # the check above is not the default by chance


def test_an_image_size_is_one_number_or_two_and_anything_else_is_refused(tmp_path):
    """``--image_size 224`` means 224 x 224 (MONAI's ``Resized`` alone would fail on it deep in the first batch), two
    numbers are kept, and a hand-written ``model.json`` with one number reads the same; anything else is refused with
    the value."""
    from scripts.settings import image_size_setting, trained_settings

    assert image_size_setting(224) == image_size_setting("224") == image_size_setting(" 224 ") == [224, 224]
    assert image_size_setting([224, 256]) == image_size_setting("[224,256]") == image_size_setting("224, 256")
    assert image_size_setting(["160", "192"]) == [160, 192]
    for wrong in (0, -5, 2.5, "abc", "[]", [1, 2, 3], None):
        with pytest.raises(ValueError, match=re.escape(repr(wrong))):
            image_size_setting(wrong)
    weights = tmp_path / "model.pt"
    settings = {"image_size": 160, "crop_padding": True, "intensity": "histogram", "num_classes": 2}
    (tmp_path / "model.json").write_text(json.dumps(settings))
    assert trained_settings(str(weights))["image_size"] == [160, 160]
    (tmp_path / "model.json").write_text(json.dumps({**settings, "image_size": "big"}))
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'model.json'))}: image_size must be"):
        trained_settings(str(weights))


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(tmp_path):
    first = train_tiny_model(tmp_path, num_cases=8, image_size=64, epochs=1)
    checkpoint = first["models"] / "checkpoint_epoch=1.pt"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(saved) and saved["trainer"]["iteration"] > 0

    second = train_tiny_model(
        tmp_path, num_cases=8, image_size=64, epochs=2, extra=("--resume", "on", "--train#log_every", "1")
    )
    log = second["log"]
    assert "Epoch: 2/2" in log and "Epoch: 1/2" not in log, log[-3000:]
    from scripts.training.checkpoints import latest_checkpoint

    assert latest_checkpoint(str(first["models"])).endswith("checkpoint_epoch=2.pt")
    # the raised max_epochs is the schedule's new length (the checkpoint held the 1-epoch run's)
    resumed = torch.load(first["models"] / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert resumed["lr_scheduler"]["t_total"] == 2 * saved["lr_scheduler"]["t_total"]


@pytest.mark.slow
def test_resuming_a_finished_run_trains_nothing(tmp_path):
    """A run resumed at its own ``max_epochs`` is complete: it says so, and the model and checkpoint stay as they are
    (ignite alone would train it again from epoch 1 over the finished model)."""
    first = train_tiny_model(tmp_path, num_cases=8, image_size=64, epochs=2)
    files = {p.name: p.read_bytes() for p in first["models"].iterdir()}
    again = train_tiny_model(tmp_path, num_cases=8, image_size=64, epochs=2, extra=("--resume", "true"))
    assert "is complete (2 of 2 epochs): nothing to train" in again["log"], again["log"][-3000:]
    assert "Epoch: 1/2" not in again["log"] and "Epoch[1]" not in again["log"]
    assert {p.name: p.read_bytes() for p in first["models"].iterdir()} == files


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path):
    from scripts.training.checkpoints import latest_checkpoint

    with pytest.raises(FileNotFoundError, match="train without --resume first"):
        latest_checkpoint(str(tmp_path))
