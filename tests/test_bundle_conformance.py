"""MONAI bundle checks users and the model zoo run: metadata schema, network in/out shapes, TorchScript export."""

import json

import pytest
import torch
from conftest import BUNDLE, SCHEMA, run_bundle


def test_metadata_verifies_against_monai_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    proc = run_bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize("config", ["train.json", "inference.json", "evaluate.json"])
def test_network_input_output_shapes_verify(config):
    proc = run_bundle(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", f"configs/{config}"
    )
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_input_size_agrees_between_training_inference_and_metadata():
    """A model trained at one size and run at another segments worse, silently: every config must say the same size."""
    names = ("train.json", "inference.json", "evaluate.json")
    configs = {name: json.loads((BUNDLE / "configs" / name).read_text()) for name in names}
    sizes = {name: config["image_size"] for name, config in configs.items()}
    formats = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]
    sizes["metadata.json inputs"] = formats["inputs"]["image"]["spatial_shape"]
    sizes["metadata.json outputs"] = formats["outputs"]["pred"]["spatial_shape"]
    assert len({tuple(size) for size in sizes.values()}) == 1, sizes


def test_ckpt_export_gives_torchscript_equal_to_eager(tmp_path):
    from scripts.network import VGG16FCN

    torch.manual_seed(0)
    net = VGG16FCN().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    run_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(tmp_path / "model.ts"),
        "--ckpt_file",
        str(tmp_path / "model.pt"),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/train.json",
    )
    scripted = torch.jit.load(tmp_path / "model.ts")
    x = torch.rand(1, 1, 120, 90)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    assert (BUNDLE / "configs" / "metadata.json").is_file()
