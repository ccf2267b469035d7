"""The VGG16 FCN: size, shapes, scripting, pretrained-weight loading."""

import pytest
import torch
from torchvision.models import vgg16

from scripts.network import VGG16FCN, load_vgg16_features


@pytest.fixture(scope="module")
def net() -> VGG16FCN:
    torch.manual_seed(0)
    return VGG16FCN(out_channels=2).eval()


def test_parameter_count_matches_the_tutorial(net):
    assert sum(p.numel() for p in net.parameters()) == 18_643_746


@pytest.mark.parametrize("size", [(224, 224), (500, 436), (37, 70)])
def test_output_has_the_input_size(net, size):
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 2, *size)


def test_grey_input_equals_grey_repeated_to_rgb(net):
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x.repeat(1, 3, 1, 1)))


def test_other_channel_counts_are_rejected(net):
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        net(torch.rand(1, 2, 32, 32))


def test_padding_does_not_shift_the_output(net):
    """A 200 x 210 crop of a 224 x 224 input (the network pads it to 224 x 224 at its bottom and right) must not be
    moved by the padding."""
    x = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        full = net(x)
        padded_input = net(x[..., :200, :210])
    # not equal (receptive field), but strongly correlated where the image is the same: a shift would decorrelate
    a, b = full[0, 1, 40:160, 40:160].flatten(), padded_input[0, 1, 40:160, 40:160].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


@pytest.mark.parametrize("layout", ["torchvision", "features", "wrapped"])
def test_local_pretrained_file_round_trip(tmp_path, layout):
    torch.manual_seed(1)
    source = vgg16(weights=None)
    state = {
        "torchvision": source.state_dict(),
        "features": source.features.state_dict(),
        "wrapped": {"model": source.state_dict()},
    }[layout]
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loaded = VGG16FCN(pretrained=str(path))
    for (name, expected), actual in zip(
        source.features.state_dict().items(), loaded.backbone.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(actual, expected, msg=name)


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vgg16_features(str(tmp_path / "nope.pth"))


def test_file_without_vgg_weights_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(RuntimeError, match="no VGG16 'features' weights"):
        load_vgg16_features(str(path))


def test_imagenet_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError) as err:
        load_vgg16_features("imagenet", allow_download=False)
    message = str(err.value)
    assert str(tmp_path) in message and "--network_def#pretrained /path/to/vgg16-397923af.pth" in message


def test_imagenet_weights_are_taken_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    source = vgg16(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    features = load_vgg16_features("imagenet", allow_download=False)
    torch.testing.assert_close(features[0].weight, source.features[0].weight)


def test_network_def_of_inference_json_is_a_finite_network_that_scripts_like_eager():
    """``network_def`` parsed on its own, as MONAI's tools (``ckpt_export``, the model zoo's checks) and users' scripts
    do: a normally initialised network, not whatever the memory held, so its TorchScript equals its eager output."""
    from conftest import BUNDLE
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def").eval()
    assert all(torch.isfinite(t).all() for t in net.state_dict().values())
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        eager = net(x)
        scripted = torch.jit.script(net)(x)
    assert torch.isfinite(eager).all() and eager.abs().max() > 0
    torch.testing.assert_close(scripted, eager)
