"""TorchScript (``ckpt_export``) and ONNX (``onnx_export``) exports reproduce the eager network, alone and when
``configs/inference_exported.json`` runs them through the whole inference workflow on real radiographs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import dice, read_masks, run_bundle

# not a multiple of 32, so the traced ONNX graph keeps the network's pad-to-32 step for every input size
ONNX_TRACE_SHAPE = "[2,1,250,234]"
DYNAMIC_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}}
# batch 1 and 2; the default size, a non-square multiple of 32, and sizes the network must pad
SHAPES = [(1, 1, 224, 224), (2, 1, 256, 320), (1, 1, 250, 301), (2, 1, 97, 130)]
EXPORTED_CONFIGS = "['configs/inference.json','configs/inference_exported.json']"


def png_batch(files: list[Path], size: int) -> torch.Tensor:
    """Images from PNG files, grey, scaled to [0, 1] and resized like the bundle does."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensity

    from scripts.io.reader import grey_png_reader

    load = Compose(
        [
            LoadImage(reader=grey_png_reader(), image_only=True),
            EnsureChannelFirst(channel_dim="no_channel"),
            ScaleIntensity(minv=0.0, maxv=1.0),
            Resize((size, size), mode="area"),
        ]
    )
    return torch.stack([torch.as_tensor(load(str(f))) for f in files]).float()


def export_model(model: Path, out: Path, images: torch.Tensor) -> dict:
    """Export ``model`` to TorchScript and ONNX with the commands the bundle card gives."""
    from scripts.network import VGG16FCN

    common = ["--ckpt_file", str(model), "--meta_file", "configs/metadata.json", "--config_file"]
    run_bundle("ckpt_export", "network_def", "--filepath", str(out / "model.ts"), *common, "configs/inference.json")
    converter_kwargs = {"input_names": ["image"], "output_names": ["pred"], "dynamic_axes": DYNAMIC_AXES}
    # MONAI's onnx_export exports through a temporary file whose weights (a 75 MB ``<temp>.data``) it never
    # removes: keep that leak inside this test's folder instead of the machine's /tmp
    (out / "tmp").mkdir()
    run_bundle(
        "onnx_export", "network_def", "--filepath", str(out / "model.onnx"), *common, "configs/inference.json",
        "--input_shape", ONNX_TRACE_SHAPE, "--converter_kwargs", repr(converter_kwargs),
        env={"TMPDIR": str(out / "tmp")},
    )  # fmt: skip
    eager = VGG16FCN(out_channels=2, in_channels=1).eval()
    eager.load_state_dict(torch.load(model, weights_only=True))
    return {"ts": out / "model.ts", "onnx": out / "model.onnx", "eager": eager, "model": model, "images": images}


@pytest.fixture(scope="module")
def exports(trained_model, tmp_path_factory) -> dict:
    """The synthetic-data model, exported once per module."""
    images = png_batch(sorted((trained_model["data"] / "images").glob("*.png"))[:4], 96)
    return export_model(trained_model["weights"], tmp_path_factory.mktemp("export"), images)


@pytest.fixture(scope="module")
def real_exports(real_trained_model, tmp_path_factory) -> dict:
    """The model trained on real radiographs (whose masks on real images are lungs), exported."""
    return export_model(real_trained_model["weights"], tmp_path_factory.mktemp("real_export"), None)


@pytest.mark.slow
def test_torchscript_export_matches_eager(exports):
    from monai.data import load_net_with_metadata

    scripted, meta, extra = load_net_with_metadata(str(exports["ts"]), more_extra_files=["inference.json"])
    assert meta["version"] and meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert "network_def" in json.loads(extra["inference.json"])
    scripted.eval()
    for shape in SHAPES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), exports["eager"](x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        masks, eager_masks = scripted(exports["images"]).argmax(1), exports["eager"](exports["images"]).argmax(1)
    assert torch.equal(masks, eager_masks) and 0 < eager_masks.float().mean() < 1


@pytest.mark.slow
def test_onnx_export_has_dynamic_batch_height_width(exports):
    import onnx
    import onnxruntime

    graph = onnx.load(str(exports["onnx"])).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert (graph.input[0].name, dims) == ("image", ["batch", 1, "height", "width"])
    session = onnxruntime.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    for shape in SHAPES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        (pred,) = session.run(["pred"], {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(pred), exports["eager"](x), rtol=1e-4, atol=1e-4)
    (pred,) = session.run(["pred"], {"image": exports["images"].numpy()})
    with torch.no_grad():
        eager_masks = exports["eager"](exports["images"]).argmax(1).numpy()
    # ONNX Runtime and eager may round differently only where the two logits are (nearly) tied
    assert (pred.argmax(1) == eager_masks).mean() >= 0.999 and 0 < eager_masks.mean() < 1


@pytest.mark.slow
def test_inference_runs_exported_models_like_eager(real_exports, real_sample, tmp_path):
    exports = real_exports
    # 4 Shenzhen (1000x1000 RGB) radiographs the model was not
    # trained on and 1 Montgomery (4020x4892 grey) radiograph, read where they are
    names = sorted(p.name for p in (real_sample / "images").glob("CHNCXR_*.png"))[:4] + ["MCUCXR_0196_1.png"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": str(real_sample / "images" / n)} for n in names]}))
    common = ["--meta_file", "configs/metadata.json", "--dataset_dir", str(datalist),
              "--num_workers", "0", "--write_seg", "no", "--write_overlay", "0"]  # fmt: skip
    # an export reads its settings from the model.json beside it, as models/model.ts does (the tiny model is 96x96)
    shutil.copy(exports["model"].with_suffix(".json"), exports["ts"].with_name("model.json"))

    # the exports run in fp32, so the eager reference does too (the default bf16 fast path has its own parity test)
    run_bundle("run", "--config_file", "configs/inference.json", "--ckpt_path", str(exports["model"]),
               "--output_dir", str(tmp_path / "eager"), "--precision", "fp32", *common)  # fmt: skip
    eager = read_masks(tmp_path / "eager")
    # lungs found in every image: an empty or full mask would make the comparison below empty
    assert len(eager) == len(names) and all(m.any() and not m.all() for m in eager.values())
    for kind in ("ts", "onnx"):
        run_bundle("run", "--config_file", EXPORTED_CONFIGS, "--exported_model", str(exports[kind]),
                   "--output_dir", str(tmp_path / kind), *common)  # fmt: skip
        exported = read_masks(tmp_path / kind)
        assert exported.keys() == eager.keys()
        for name, mask in eager.items():
            score = dice(mask, exported[name])
            assert score >= 0.999, f"{kind} {name}: Dice {score:.5f} against the eager mask"
        report = json.loads((tmp_path / kind / "report.json").read_text())
        assert str(exports[kind].name) in json.dumps(report), "the report does not name the exported weights"


def test_missing_exported_model_is_a_clear_error(tmp_path):
    from scripts.exported import load_exported_network

    with pytest.raises(FileNotFoundError, match="ckpt_export"):
        load_exported_network(str(tmp_path / "model.ts"))
