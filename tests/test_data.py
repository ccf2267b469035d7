"""Loading radiographs and masks, and building datalists from the layouts users have."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from scripts.data.datalist import find_pairs, prepare_datalist, split_cases
from scripts.data.synthetic import generate_synthetic_dataset, synthetic_case
from scripts.io.reader import grey_png_reader
from scripts.transforms.image import ResizeToMatchd


def load(path):
    """Load one file the way the training config does: grey, channel first; returns (C, W, H) like MONAI."""
    return Compose(
        [LoadImaged("image", reader=grey_png_reader()), EnsureChannelFirstd("image", channel_dim="no_channel")]
    )({"image": str(path)})["image"]


def gradient(height=40, width=60, dtype=np.uint8, top=255):
    return (np.linspace(0, top, width)[None, :] * np.ones((height, 1))).astype(dtype)


def test_palette_png_is_decoded_through_its_palette(tmp_path):
    """Indices i map to grey 255 - i: reading raw indices would give the reversed image."""
    indices = gradient()
    image = Image.fromarray(indices).convert("P")
    image.putdata(indices.flatten().tolist())
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    image.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    loaded = load(tmp_path / "palette.png")
    assert loaded.shape == (1, 60, 40)  # MONAI's (x, y) order: columns first
    np.testing.assert_array_equal(loaded[0].numpy().T, 255 - indices)


def test_rgb_with_equal_channels_becomes_the_same_grey(tmp_path):
    grey = gradient()
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load(tmp_path / "rgb.png")[0].numpy().T, grey)


def test_16_bit_png_keeps_its_depth(tmp_path):
    grey = gradient(dtype=np.uint16, top=4095)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(load(tmp_path / "deep.png")[0].numpy().T, grey)


def test_jpeg_is_read_as_grey(tmp_path):
    grey = gradient()
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "x.jpg", quality=95)
    loaded = load(tmp_path / "x.jpg")
    assert loaded.shape == (1, 60, 40)
    assert np.abs(loaded[0].numpy().T.astype(float) - grey).max() <= 3


def test_mask_of_another_size_is_resized_nearest_onto_the_image_grid():
    image = torch.zeros(1, 100, 80)
    mask = torch.zeros(1, 300, 240)
    mask[:, 150:, :] = 255  # right half along the first axis
    out = ResizeToMatchd("label", ref_key="image")({"image": image, "label": mask})["label"]
    assert out.shape == (1, 100, 80)
    assert set(torch.unique(out).tolist()) == {0.0, 255.0}  # nearest: no new values
    assert out[0, :50].max() == 0 and out[0, 50:].min() == 255


def _touch_png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_kaggle_layout_pairs_both_naming_schemes_and_reports_unpaired(tmp_path):
    root = tmp_path / "Lung Segmentation"
    for name in ("CHNCXR_0001_0", "CHNCXR_0002_1", "MCUCXR_0001_0", "MCUCXR_0002_1", "CHNCXR_0003_0"):
        _touch_png(root / "CXR_png" / f"{name}.png")
    for name in ("CHNCXR_0001_0_mask", "CHNCXR_0002_1_mask", "MCUCXR_0001_0", "MCUCXR_0002_1", "CHNCXR_0099_0_mask"):
        _touch_png(root / "masks" / f"{name}.png", 255)
    _touch_png(root / "test" / "CHNCXR_0500_0.png")
    found = find_pairs(str(tmp_path))
    pairs = {p["image"].rsplit("/", 1)[1]: p["label"].rsplit("/", 1)[1] for p in found["pairs"]}
    assert pairs == {
        "CHNCXR_0001_0.png": "CHNCXR_0001_0_mask.png",
        "CHNCXR_0002_1.png": "CHNCXR_0002_1_mask.png",
        "MCUCXR_0001_0.png": "MCUCXR_0001_0.png",
        "MCUCXR_0002_1.png": "MCUCXR_0002_1.png",
    }
    assert [p.rsplit("/", 1)[1] for p in found["unpaired_images"]] == ["CHNCXR_0003_0.png"]
    assert [p.rsplit("/", 1)[1] for p in found["unpaired_masks"]] == ["CHNCXR_0099_0_mask.png"]
    assert [p.rsplit("/", 1)[1] for p in found["unlabelled"]] == ["CHNCXR_0500_0.png"]


def test_split_is_seeded_disjoint_and_complete():
    cases = [{"image": f"{i}.png", "label": f"{i}_m.png"} for i in range(37)]
    a, b = split_cases(cases, 0.2, 0.1, seed=3), split_cases(cases, 0.2, 0.1, seed=3)
    assert a == b
    assert (len(a["training"]), len(a["validation"]), len(a["test"])) == (26, 7, 4)
    names = [c["image"] for part in a.values() for c in part]
    assert sorted(names) == sorted(c["image"] for c in cases)
    assert split_cases(cases, 0.2, 0.1, seed=4) != a


def test_plain_folders_and_written_datalist(tmp_path):
    for i in range(5):
        _touch_png(tmp_path / "data" / "images" / f"case{i}.png")
        _touch_png(tmp_path / "data" / "masks" / f"case{i}.png", 255)
    out = tmp_path / "out" / "datalist.json"
    datalist = prepare_datalist(str(tmp_path / "data"), str(out), val_fraction=0.2, test_fraction=0.2)
    assert json.loads(out.read_text()) == datalist
    assert sum(len(datalist[k]) for k in ("training", "validation", "test")) == 5


def test_user_datalist_json_with_relative_paths(tmp_path):
    for i in range(4):
        _touch_png(tmp_path / "img" / f"{i}.png")
        _touch_png(tmp_path / "lab" / f"{i}.png", 255)
    spec = {"training": [{"image": f"img/{i}.png", "label": f"lab/{i}.png"} for i in range(4)]}
    (tmp_path / "list.json").write_text(json.dumps(spec))
    datalist = prepare_datalist(str(tmp_path / "list.json"), val_fraction=0.25)
    assert len(datalist["training"]) == 3 and len(datalist["validation"]) == 1
    assert all(item["image"].startswith(str(tmp_path)) for item in datalist["training"])


def test_missing_folders_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image and mask folders"):
        prepare_datalist(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_datalist(str(tmp_path / "nowhere"))


def test_synthetic_default_is_deterministic_and_plausible(tmp_path):
    image_a, mask_a = synthetic_case(7)
    image_b, mask_b = synthetic_case(7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    sizes = {synthetic_case(s)[0].shape for s in range(6)}
    assert len(sizes) > 1 and any(h != w for h, w in sizes)
    assert 0.05 < (mask_a > 0).mean() < 0.4
    assert image_a[mask_a > 0].mean() < image_a[mask_a == 0].mean()  # lungs are dark
    datalist = prepare_datalist("", synthetic_dir=str(tmp_path / "synth"))
    assert len(datalist["training"]) + len(datalist["validation"]) + len(datalist["test"]) == 40
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "synth").rglob("*") if p.is_file()}
    generate_synthetic_dataset(str(tmp_path / "synth"))  # a second call reuses the files: none is written again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "synth").rglob("*") if p.is_file()} == written


def test_real_shenzhen_mask_lands_on_the_image_grid(real_sample):
    pairs = {p["image"].rsplit("/", 1)[1]: p for p in find_pairs(str(real_sample))["pairs"]}
    assert len(pairs) == 37
    pair = pairs["CHNCXR_0601_1.png"]
    loader = Compose(
        [
            LoadImaged(["image", "label"], reader=grey_png_reader()),
            EnsureChannelFirstd(["image", "label"], channel_dim="no_channel"),
            ResizeToMatchd("label", ref_key="image"),
        ]
    )
    data = loader(pair)
    assert data["image"].shape == data["label"].shape == (1, 1000, 1000)
    lung = data["label"][0] > 0
    assert 0.15 < lung.float().mean() < 0.45
    # lungs are darker than the rest of the radiograph
    assert data["image"][0][lung].mean() < data["image"][0][~lung].mean()


# ---- the data set classes training chooses between (scripts/data/datasets.py) ----


def _pngs(tmp_path: Path, n: int = 3) -> list[dict]:
    from scripts.data.synthetic import generate_synthetic_dataset

    data = Path(generate_synthetic_dataset(str(tmp_path / "data"), num_cases=n))
    return [{"image": str(p), "label": str(data / "masks" / p.name)} for p in sorted((data / "images").glob("*.png"))]


def _preprocessing(size: int):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

    return Compose([
        LoadImaged(keys=["image", "label"], image_only=True),
        EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel"),
        Resized(keys=["image", "label"], spatial_size=(size, size)),
    ])  # fmt: skip


def test_dataset_types(tmp_path):
    from monai.data import CacheDataset, Dataset, PersistentDataset

    from scripts.data.datasets import make_dataset

    items = _pngs(tmp_path, 4)
    cached = make_dataset(items, _preprocessing(32), "cache", cache_rate=0.5, num_workers=1)
    assert isinstance(cached, CacheDataset) and cached.cache_num == 2 and cached[3]["image"].shape == (1, 32, 32)
    plain = make_dataset(items, _preprocessing(32), "plain")
    assert type(plain) is Dataset and plain[0]["image"].shape == (1, 32, 32)
    persistent = make_dataset(items, _preprocessing(32), "persistent", cache_dir=str(tmp_path / "cache"))
    assert isinstance(persistent, PersistentDataset) and persistent[0]["image"].shape == (1, 32, 32)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    with pytest.raises(ValueError, match="cache_dir"):
        make_dataset(items, _preprocessing(32), "persistent")
    with pytest.raises(ValueError, match="unknown dataset_type 'lmdb'"):
        make_dataset(items, _preprocessing(32), "lmdb")


def test_persistent_cache_is_not_reused_after_the_transforms_change(tmp_path):
    from scripts.data.datasets import make_dataset

    items, cache = _pngs(tmp_path, 1), str(tmp_path / "cache")
    assert make_dataset(items, _preprocessing(32), "persistent", cache_dir=cache)[0]["image"].shape == (1, 32, 32)
    # same files, same cache folder, another image_size: new cache entries, never the stale 32x32 ones
    assert make_dataset(items, _preprocessing(48), "persistent", cache_dir=cache)[0]["image"].shape == (1, 48, 48)
    assert len(list(Path(cache).glob("*.pt"))) == 2
