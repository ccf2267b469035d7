"""The fast inference path (bf16 autocast, channels-last) gives the masks of the fp32 path on real radiographs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import dice, read_masks, run_bundle


def test_auto_precision_follows_the_device():
    from scripts.acceleration import cpu_supports_bf16, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4", "cpu")


def test_fast_network_shares_weights_and_returns_fp32():
    from scripts.acceleration import FastNetwork
    from scripts.network import VGG16FCN

    torch.manual_seed(0)
    net = VGG16FCN().eval()
    fast = FastNetwork(net, "cpu", "bf16", channels_last=True)
    assert all(a is b for a, b in zip(fast.network.parameters(), net.parameters(), strict=True))
    x = torch.rand(2, 1, 100, 130)
    with torch.no_grad():
        out, reference = fast(x), FastNetwork(net, "cpu", "fp32", channels_last=False)(x)
    assert out.dtype == torch.float32 and out.shape == (2, 2, 100, 130)
    # bf16 has 8 bits of mantissa: close to fp32, but not equal (so the test would see an fp32 fallback)
    assert not torch.equal(out, reference) and torch.allclose(out, reference, atol=0.1, rtol=0.05)


def test_inference_casts_the_weights_once_with_the_outputs_of_plain_autocast():
    from scripts.acceleration import FastNetwork
    from scripts.network import VGG16FCN

    torch.manual_seed(0)
    net = VGG16FCN().eval()
    fast = FastNetwork(net, "cpu", "bf16", channels_last=True)
    x = torch.rand(2, 1, 64, 96)

    def plain_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    with torch.no_grad():
        assert torch.equal(fast(x), plain_autocast())
        cast = fast._cast
        fast(x)
        assert fast._cast is cast  # unchanged weights: not cast again
        net.classifier.weight.mul_(-1)  # weights changed in place (as an optimiser step or a checkpoint load does)
        assert torch.equal(fast(x), plain_autocast()) and fast._cast is not cast
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training: autocast itself, so gradients reach the weights
        fast(x).sum().backward()
    assert net.classifier.weight.grad is not None


@pytest.mark.slow
def test_bf16_masks_match_fp32_masks_on_real_radiographs(real_trained_model, real_sample, tmp_path):
    # 3 Shenzhen (1000x1000 RGB) radiographs the model was not
    # trained on and 1 Montgomery (4020x4892 grey) radiograph, read where they are
    names = sorted(p.name for p in (real_sample / "images").glob("CHNCXR_*.png"))[:3] + ["MCUCXR_0196_1.png"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": str(real_sample / "images" / n)} for n in names]}))
    weights = str(real_trained_model["weights"])
    common = ["--dataset_dir", str(datalist), "--ckpt_path", weights, "--image_size", "[96,96]",
              "--num_workers", "0", "--write_seg", "False", "--write_overlay", "False"]  # fmt: skip
    masks = {}
    # bf16 named explicitly: on a CPU without native bf16 "auto" means fp32 and the comparison would be empty
    for precision in ("fp32", "bf16"):
        run_bundle("run", "--config_file", "configs/inference.json", "--precision", precision,
                   "--output_dir", str(tmp_path / precision), *common)  # fmt: skip
        masks[precision] = read_masks(tmp_path / precision)
    assert masks["fp32"].keys() == masks["bf16"].keys() and len(masks["fp32"]) == len(names)
    for name, reference in masks["fp32"].items():
        fast = masks["bf16"][name]
        assert reference.any() and not reference.all(), f"{name}: empty or full mask, nothing compared"
        score = dice(reference, fast)
        assert score >= 0.995, f"{name}: bf16 mask Dice {score:.5f} against the fp32 mask"
