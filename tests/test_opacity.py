"""The simulated-opacity augmentation: it paints soft-tissue-dense regions into the lungs and nothing else."""

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd
from PIL import Image

from scripts.io.reader import grey_png_reader
from scripts.transforms.opacity import RandLungOpacityd


@pytest.fixture
def chest(tmp_path):
    """A PNG radiograph phantom and its lung mask, loaded as train.json loads them: (1, x, y), image in [0, 1].

    Dark lungs (40) in a soft-tissue body (180) on a black background; the phantom is 120 wide and 160 tall so that
    x and y cannot be confused.
    """
    image = np.zeros((160, 120), np.uint8)
    image[10:150, 10:110] = 180
    lungs = np.zeros_like(image)
    lungs[25:135, 20:55] = 255
    lungs[25:135, 65:100] = 255
    image[lungs > 0] = 40
    Image.fromarray(image).save(tmp_path / "chest.png")
    Image.fromarray(lungs).save(tmp_path / "lungs.png")
    keys = ["image", "label"]
    load = Compose(
        [
            LoadImaged(keys, reader=grey_png_reader(), image_only=True),
            EnsureChannelFirstd(keys, channel_dim="no_channel"),
            ScaleIntensityd("image"),
        ]
    )
    data = load({"image": str(tmp_path / "chest.png"), "label": str(tmp_path / "lungs.png")})
    data["label"] = (data["label"] > 0).float()
    return data


def test_opacity_brightens_only_the_lung_field_and_keeps_the_label(chest):
    out = RandLungOpacityd("image", prob=1.0, coverage=(0.4, 0.4), strength=(1.0, 1.0)).set_random_state(0)(chest)
    before, after = chest["image"][0], out["image"][0]
    torch.testing.assert_close(out["label"], chest["label"], rtol=0, atol=0)
    changed = (after - before).abs() > 1e-4
    assert (after >= before - 1e-6).all(), "an opacity never darkens"
    # within 2 pixels of the lungs (the edge is softened), nowhere else
    near_lungs = torch.nn.functional.max_pool2d(chest["label"][None], 5, 1, 2)[0, 0] > 0
    assert changed.any() and not (changed & ~near_lungs).any()
    lung = chest["label"][0] > 0
    lift = after - before
    covered = (lift[lung] > 0.5 * lift.max()).float().mean().item()
    assert 0.25 < covered < 0.55, covered  # about the asked-for 40 % of the lung field
    assert after.max() <= 1.0 + 1e-6, "moved towards the soft-tissue level, not beyond it"


def test_opacity_prefers_the_lung_bases_down_the_image(chest):
    """MONAI's 2D layout is (x, y): the bases are at high y. With a strong basal bias the lower lung fills first."""
    transform = RandLungOpacityd("image", prob=1.0, coverage=(0.3, 0.3), max_basal_bias=8.0).set_random_state(1)
    lower, upper = 0.0, 0.0
    for _ in range(8):
        lift = transform(chest)["image"][0] - chest["image"][0]
        lower += lift[:, 80:].sum().item()
        upper += lift[:, :80].sum().item()
    assert lower > 3 * upper


def test_opacity_is_seeded_and_respects_its_probability(chest):
    first = RandLungOpacityd("image", prob=1.0).set_random_state(7)(chest)["image"]
    again = RandLungOpacityd("image", prob=1.0).set_random_state(7)(chest)["image"]
    torch.testing.assert_close(first, again)
    never = RandLungOpacityd("image", prob=0.0).set_random_state(7)
    assert all(torch.equal(never(chest)["image"], chest["image"]) for _ in range(5))
    blank = {"image": chest["image"], "label": torch.zeros_like(chest["label"])}
    assert torch.equal(RandLungOpacityd("image", prob=1.0)(blank)["image"], chest["image"])


@pytest.mark.parametrize("override", [None, 0.15])
def test_train_json_wires_the_opacity_probability(override):
    """train.json's augmentation chain holds the transform, with `train#opacity_prob` (0 by default) as its
    probability."""
    from conftest import BUNDLE
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    if override is not None:
        parser["train#opacity_prob"] = override
    chain = parser.get_parsed_content("train#random_transforms", instantiate=True)
    opacities = [t for t in chain if isinstance(t, RandLungOpacityd)]
    assert len(opacities) == 1
    assert opacities[0].prob == (0.0 if override is None else override)
    assert opacities[0].label_key == "label"
