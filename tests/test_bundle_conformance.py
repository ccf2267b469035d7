"""MONAI bundle checks users and the model zoo run: metadata schema, network in/out shapes, TorchScript export."""

import json

import pytest
from conftest import BUNDLE, SCHEMA, run_bundle


def test_metadata_verifies_against_monai_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    proc = run_bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "config", ["configs/train.json", "configs/inference.json", "['configs/inference.json','configs/evaluate.json']"]
)
def test_network_input_output_shapes_verify(config):
    proc = run_bundle(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", config
    )
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_the_model_settings_are_written_once():
    """A model run at another size than it was trained at segments worse, silently: the input size, the padding crop
    and the number of classes are written in train.json only (the recipe), and inference and evaluation read them from
    the model (see test_training); the metadata describes the same model."""
    configs = {p.name: json.loads(p.read_text()) for p in (BUNDLE / "configs").glob("*.json")}
    for key in ("image_size", "crop_padding", "num_classes"):
        literal = [name for name, config in configs.items() if not str(config.get(key, "$")).startswith("$")]
        assert literal == ["train.json"] or sorted(literal) == ["recipe_tutorial.json", "train.json"], (key, literal)
    formats = configs["metadata.json"]["network_data_format"]
    for shape in (formats["inputs"]["image"]["spatial_shape"], formats["outputs"]["pred"]["spatial_shape"]):
        assert shape == configs["train.json"]["image_size"]
    assert formats["outputs"]["pred"]["num_channels"] == configs["train.json"]["num_classes"]
