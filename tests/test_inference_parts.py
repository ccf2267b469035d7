"""The parts of batch inference on their own (no network): discovery and its reasons, safe atomic writers, the
right/left lung split and relative component filter, lung measurements, and failure handling in the dataset."""

import json
import os

import dicom_factory as make
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForegroundd, FillHolesd, KeepLargestConnectedComponentd, LoadImaged
from PIL import Image

from scripts.batch.fault_tolerance import ERROR_KEY, FAILED_KEY, STATUS_KEY, GuardedDataset, collate_skipping_failures
from scripts.batch.writers import inside, output_stem, write_dicom_seg
from scripts.data.synthetic import synthetic_case
from scripts.io.discovery import discover_inputs
from scripts.io.files import atomic_write
from scripts.io.reader import RadiographReader
from scripts.lungs import measure_lungs, patient_right_on_image_left, split_lung_sides
from scripts.transforms.image import padding_crop_selector
from scripts.transforms.postprocess import KeepLungComponentsd, KeepLungProbabilityd, LabelLungSidesd


def test_every_file_is_classified_with_a_reason(tmp_path):
    image = synthetic_case(0)[0]
    make.save(make.radiograph(image), tmp_path / "a" / "IM0001")
    make.save(make.radiograph(image, modality="CT", sop_class=make.CT_IMAGE), tmp_path / "a" / "ct.dcm")
    make.save(make.radiograph(np.stack([image] * 2)), tmp_path / "a" / "frames.dcm")
    make.save(make.structured_report(), tmp_path / "b" / "sr.dcm")
    make.save(make.key_object_selection(), tmp_path / "b" / "kos")
    make.save(make.presentation_state(), tmp_path / "b" / "pr.dcm")
    make.save(make.encapsulated_pdf(), tmp_path / "b" / "pdf.dcm")
    make.write_dicomdir(tmp_path / "media", [make.radiograph(image)])
    Image.fromarray(image).save(tmp_path / "c.png")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "junk.bin").write_bytes(b"\x01" * 500)
    (tmp_path / "fake.dcm").write_text("hello")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.dcm").write_bytes(b"x")  # hidden files are not inputs
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_bytes(b"x")  # the output folder is excluded

    found = {e["input"]: e for e in discover_inputs(str(tmp_path), exclude=[str(tmp_path / "out")])}
    # (status, reason): at discovery for what a name and the first bytes tell; else when the reader opens the file
    expected = {
        "a/IM0001": ("ok", ""),
        "a/ct.dcm": ("skipped", "modality CT is not a projection radiograph"),
        "a/frames.dcm": ("skipped", "multi-frame image (2 frames"),
        "b/sr.dcm": ("skipped", "structured report"),
        "b/kos": ("skipped", "Key Object Selection"),
        "b/pr.dcm": ("skipped", "presentation state"),
        "b/pdf.dcm": ("skipped", "encapsulated document (Encapsulated PDF Storage)"),
        "media/DICOMDIR": ("skipped", "DICOMDIR"),
        "media/PT000000/ST000000/SE000000/IM000000": ("ok", ""),
        "c.png": ("ok", ""),
        "empty.dcm": ("failed", "empty file (0 bytes)"),
        "junk.bin": ("failed", "unrecognised file"),
        "fake.dcm": ("failed", "reading the header: not a DICOM file"),
        "notes.txt": ("skipped", "not an image (.txt file)"),
    }
    assert set(found) == set(expected)
    pending = [e for e in found.values() if e["status"] == "pending"]
    discovered_only = {"media/DICOMDIR", "empty.dcm", "junk.bin", "notes.txt"}  # told by name or first bytes
    assert {e["input"] for e in pending} == set(expected) - discovered_only
    reader = Compose([LoadImaged("image", reader=RadiographReader(), image_only=True)])
    for entry in pending:
        item = GuardedDataset([{"image": entry["path"]}], reader)[0]
        entry["status"], entry["reason"] = item.get(STATUS_KEY, "ok"), item.get(ERROR_KEY, "")
    for name, (status, reason) in expected.items():
        assert found[name]["status"] == status and reason in found[name]["reason"], (name, found[name])
    assert len({e["key"] for e in found.values()}) == len(found)


def test_datalist_json_replaces_the_folder(tmp_path):
    Image.fromarray(synthetic_case(0)[0]).save(tmp_path / "a.png")
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"testing": [{"image": "a.png"}, "missing.png", {"image": "a.png"}]}))
    entries = discover_inputs(str(datalist))
    assert [(e["input"], e["status"]) for e in entries] == [
        ("a.png", "pending"),
        ("missing.png", "failed"),
        ("a.png", "skipped"),
    ]
    assert entries[1]["reason"] == "file not found" and "listed twice" in entries[2]["reason"]
    datalist.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="'testing' or 'test'"):
        discover_inputs(str(datalist))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "a/../../b.png",
        ".hidden.png",
        "x" * 300 + ".dcm",
        "we ird ü (1).png",
        "C:\\Windows\\evil.dcm",
        "a/./b/../c\x00d.dcm",
    ],
)
def test_output_names_cannot_escape_the_output_folder(tmp_path, name):
    stem = output_stem(name, "0123456789abcdef")
    assert all(part and not part.startswith(".") and len(part) <= 80 for part in stem.split("/"))
    assert set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
    path = inside(str(tmp_path), stem + "_mask.png")
    assert os.path.commonpath([str(tmp_path), path]) == str(tmp_path)


def test_inside_refuses_symbolic_links_out_of_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "link")
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(str(tmp_path / "out"), "link/x_mask.png")
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(str(tmp_path / "out"), "../x.png")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(str(tmp_path / "x.png"), fail)
    assert os.listdir(tmp_path) == []


def two_lungs(shape=(120, 100), right_lung_wider=True) -> np.ndarray:
    """(x, y) mask: a lung on the image's left (x < 50) and one on its right; the image-left one is larger."""
    mask = np.zeros(shape, np.uint8)
    mask[10 : 45 if right_lung_wider else 35, 20:80] = 1
    mask[60:95, 20:70] = 1
    return mask


def test_split_lung_sides_puts_the_patients_right_on_the_image_left():
    sides = split_lung_sides(two_lungs())
    assert set(np.unique(sides[10:35, 20:80])) == {1} and set(np.unique(sides[60:95, 20:70])) == {2}
    flipped = split_lung_sides(two_lungs(), right_on_image_left=False)
    assert set(np.unique(flipped[10:35, 20:80])) == {2}
    merged = two_lungs()
    merged[40:65, 40:45] = 1  # a bridge: one component, split at the narrow middle
    sides = split_lung_sides(merged)
    assert (sides[:30] == 2).sum() == 0 and (sides[70:] == 1).sum() == 0
    assert patient_right_on_image_left("L\\F") and not patient_right_on_image_left("R\\F")
    assert patient_right_on_image_left("")


def test_label_lung_sides_transform_reads_the_patient_orientation():
    mask = MetaTensor(torch.as_tensor(two_lungs()[None], dtype=torch.float32), meta={"patient_orientation": "R\\F"})
    out = LabelLungSidesd("pred")({"pred": mask})["pred"]
    assert out.shape == mask.shape and out[0, 20, 50] == 2 and out[0, 70, 50] == 1


def test_keep_lung_components_drops_small_components_relative_to_the_largest():
    mask = two_lungs()
    mask[110:114, 90:94] = 1  # 16 pixels: below 10% of the largest lung
    keep = KeepLungComponentsd("pred", num_components=3, min_fraction=0.1)
    out = keep({"pred": torch.as_tensor(mask[None], dtype=torch.float32)})
    np.testing.assert_array_equal(out["pred"][0].numpy(), two_lungs())
    kept = KeepLungComponentsd("pred", num_components=3)({"pred": torch.as_tensor(mask[None], dtype=torch.float32)})
    np.testing.assert_array_equal(kept["pred"][0].numpy(), mask)  # no fraction: all three stay


@pytest.mark.parametrize("connectivity", [None, 1])
def test_keep_lung_components_gives_monai_keep_largest_and_fill_holes_result(tmp_path, connectivity):
    """Lung-like masks with holes of every kind (enclosed, touching the edge, diagonal leaks, a hole in a hole) and
    noise components, and random masks full of ties between component sizes: the pixels of MONAI's
    KeepLargestConnectedComponentd then FillHolesd."""
    rng = np.random.default_rng(0)
    lungs = np.zeros((300, 240), np.uint8)  # (rows, columns) as written
    lungs[30:270, 20:110] = 255
    lungs[30:270, 130:225] = 255
    lungs[60:90, 40:70] = 0  # an enclosed hole
    lungs[70:80, 50:60] = 255  # an island in it
    lungs[100:140, 200:240] = 0  # open to the right edge
    lungs[200:210, 60:70] = 0  # a hole that leaks out only diagonally ...
    for step in range(41):
        lungs[210 + step, 70 + step] = 0  # ... along a one-pixel diagonal to the gap between the lungs
    lungs[rng.random(lungs.shape) < 0.01] = 0  # pepper
    lungs[5:9, 5:9] = 255  # a small component in a corner
    Image.fromarray(lungs).save(tmp_path / "mask.png")
    masks = [np.asarray(Image.open(tmp_path / "mask.png")).T[None] > 0]
    masks += [(rng.random((1, 40, 30)) < rng.uniform(0.2, 0.8)) for _ in range(80)]
    masks += [np.zeros((1, 20, 20), bool)]
    for num_components in (1, 2, 3):
        monai_chain = Compose(
            [
                KeepLargestConnectedComponentd(
                    "pred", applied_labels=[1], num_components=num_components, connectivity=connectivity
                ),
                FillHolesd("pred", applied_labels=[1], connectivity=connectivity),
            ]
        )
        ours = KeepLungComponentsd("pred", num_components=num_components, connectivity=connectivity)
        for mask in masks:
            pred = MetaTensor(torch.as_tensor(mask, dtype=torch.float32))
            got = ours({"pred": pred})["pred"]
            expected = monai_chain({"pred": pred.clone()})["pred"]
            assert isinstance(got, MetaTensor) and got.dtype == torch.float32
            torch.testing.assert_close(got.as_tensor(), expected.as_tensor().float(), rtol=0, atol=0)
    png = MetaTensor(torch.as_tensor(masks[0], dtype=torch.float32))
    filled = KeepLungComponentsd("pred", num_components=2, connectivity=connectivity)({"pred": png})["pred"][0]
    assert filled[45, 65] == 1 and filled[220, 120] == 0  # the enclosed hole is filled, the one open to the edge not
    assert filled[65, 205] == (connectivity == 1)  # the diagonal leak is open only to 8-connected background


def test_lungs_kept_on_the_network_grid_give_the_full_size_steps_mask():
    """Components and holes decided on a 64x48 probability grid, then bilinear upsampling to 640x480 and the
    threshold: the mask of the full-size steps (upsample, threshold, keep the two largest, fill holes), without
    labelling the full-size mask; a removed component's probabilities are 0, a filled hole's 1."""
    rng = np.random.default_rng(1)
    grid = np.full((64, 48), 0.2, np.float32)
    grid[8:56, 4:20] = 0.9  # right lung
    grid[8:56, 26:44] = 0.8  # left lung
    grid[20:26, 8:14] = 0.1  # a hole in the right lung
    grid[58:62, 2:6] = 0.7  # a third, smaller component
    grid += rng.uniform(-0.05, 0.05, grid.shape).astype(np.float32)  # no value near the threshold
    probability = MetaTensor(torch.as_tensor(grid[None]))
    kept = KeepLungProbabilityd("pred", threshold=0.5, num_components=2)({"pred": probability})["pred"]
    assert isinstance(kept, MetaTensor) and kept.shape == probability.shape
    assert torch.all(kept[0, 58:62, 2:6] == 0) and torch.all(kept[0, 20:26, 8:14] == 1)
    assert torch.equal(kept[0, 30:50, 26:44], probability[0, 30:50, 26:44])  # lungs keep their probabilities

    def upsampled(values: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(values[None].float(), size=(640, 480), mode="bilinear")[0] >= 0.5

    full_size_steps = KeepLungComponentsd("pred", num_components=2)({"pred": upsampled(probability).float()})["pred"]
    np.testing.assert_array_equal(upsampled(kept).numpy(), full_size_steps.numpy() > 0)
    assert upsampled(probability)[0, 600, 40] and not upsampled(kept)[0, 600, 40]  # the third component is gone


def test_measure_lungs_areas_and_flags():
    mask = two_lungs().T  # (rows, columns)
    m = measure_lungs(mask, pixel_spacing=(0.2, 0.1))
    assert m["lung_area_px"] == mask.sum() and m["right_lung_area_px"] == 35 * 60 and m["left_lung_area_px"] == 35 * 50
    assert m["lung_area_cm2"] == round(mask.sum() * 0.02 / 100, 2) and m["components"] == 2
    assert m["quality_flags"] == []
    assert measure_lungs(np.zeros((50, 50)))["quality_flags"] == ["empty_mask", "not_two_components"]
    one = np.zeros((100, 100), np.uint8)
    one[10:90, 10:90] = 1
    assert {"not_two_components", "lung_fraction_high"} <= set(measure_lungs(one)["quality_flags"])
    assert measure_lungs(mask, None)["lung_area_cm2"] is None


def test_measure_lungs_sides_match_scipy_centroids_for_few_and_many_components():
    """Side areas from the components' centroids, checked against SciPy's labelling and centres of mass, for masks
    of one to thousands of components (the per-component and the bincount paths)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    masks = []
    for count in (2, 3, 4, 5, 7):  # blobs at random places, some touching
        mask = np.zeros((120, 160), bool)
        for _ in range(count):
            r, c = rng.integers(0, 100), rng.integers(0, 140)
            mask[r : r + rng.integers(5, 20), c : c + rng.integers(5, 20)] = True
        masks.append(mask)
    masks += [rng.random((90, 70)) < p for p in (0.2, 0.45)]  # noise: many components
    for mask in masks:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count < 2:
            continue
        sizes = ndimage.sum_labels(mask, labels, range(1, count + 1))
        columns = np.array([c for _, c in ndimage.center_of_mass(mask, labels, range(1, count + 1))])
        largest = np.argsort(sizes, kind="stable")[::-1][:2]
        on_left = sizes[columns < columns[largest].mean()].sum()
        m = measure_lungs(mask.view(np.uint8))
        assert m["components"] == count and m["lung_area_px"] == mask.sum()
        assert m["right_lung_area_px"] == on_left and m["left_lung_area_px"] == mask.sum() - on_left


@pytest.mark.parametrize("radius", [1, 3, 8])
def test_erode_is_scipys_minimum_filter(radius):
    from scipy import ndimage

    from scripts.lungs import erode

    rng = np.random.default_rng(radius)
    masks = [rng.random((64, 48)) < 0.7, np.ones((30, 40), bool), two_lungs() > 0, np.zeros((5, 5), bool)]
    for mask in masks:
        expected = ndimage.minimum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="constant", cval=0) > 0
        np.testing.assert_array_equal(erode(mask, radius), expected)


def test_failed_items_travel_as_markers(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from scripts.io.reader import RadiographReader

    Image.fromarray(synthetic_case(0)[0]).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    transform = Compose(
        [
            LoadImaged("image", reader=RadiographReader(), image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
        ]
    )
    data = [{"image": str(tmp_path / n), "case_key": n} for n in ("good.png", "bad.png")]
    items = [GuardedDataset(data, transform)[i] for i in range(2)]
    assert ERROR_KEY not in items[0] and items[1][ERROR_KEY].startswith("reading the image: cannot read the PNG header")
    assert items[1][STATUS_KEY] == "failed"
    batch = collate_skipping_failures(items)
    assert batch["image"].shape[0] == 1 and [f["case_key"] for f in batch[FAILED_KEY]] == ["bad.png"]
    assert list(collate_skipping_failures(items[1:])) == [FAILED_KEY]


def test_dicom_seg_without_patient_details_still_references_its_source(tmp_path):
    image, mask = synthetic_case(2)
    source = make.radiograph(image, imager_pixel_spacing=(0.3, 0.2))
    del source.PatientName, source.StudyDate  # anonymised exports drop these
    path, uid = write_dicom_seg(
        str(tmp_path / "seg.dcm"), source, mask > 0, pixel_spacing=(0.3, 0.2), label_sides=False, uid_seed="settings-1"
    )
    seg = pydicom.dcmread(path)
    assert seg.SOPInstanceUID == uid and seg.StudyInstanceUID == source.StudyInstanceUID
    again = write_dicom_seg(str(tmp_path / "seg2.dcm"), source, mask > 0, uid_seed="settings-1")[1]
    other = write_dicom_seg(str(tmp_path / "seg3.dcm"), source, mask > 0, uid_seed="settings-2")[1]
    assert again == uid != other  # same source and settings: same UID; new settings: new UID
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="no valid StudyInstanceUID"):
        write_dicom_seg(str(tmp_path / "seg4.dcm"), source, mask > 0)


def test_padding_crop_removes_only_edge_to_edge_padding_and_follows_its_switch():
    def cropped_shape(image: torch.Tensor, crop_padding) -> tuple[int, ...]:
        crop = CropForegroundd("image", "image", select_fn=padding_crop_selector(crop_padding), allow_smaller=True)
        return tuple(crop({"image": image})["image"].shape)

    image = torch.zeros(1, 50, 60)
    image[0, 5:40, 10:60] = torch.rand(35, 50) + 0.1
    image[0, 20, 30] = 0.0  # a pixel at the minimum inside the radiograph stays
    assert cropped_shape(image, True) == (1, 35, 50)
    # monai.bundle passes `--crop_padding false` as the string "false"
    for off in (False, "false", "False", 0, "0"):
        assert cropped_shape(image, off) == (1, 50, 60), off
    # a blank image keeps its size rather than cropping to nothing (which would fail in the resize after the crop)
    assert cropped_shape(torch.full((1, 50, 60), 0.3), True) == (1, 50, 60)


class RefusesBrightImages(torch.nn.Module):
    """A real network (one convolution) whose forward pass fails on one kind of input, as a kernel can fail for one
    image of a batch (an unusual size, a numerical error)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).mean(1) > 0.8).any()):
            raise RuntimeError("cannot segment a bright image")
        return self.conv(x)


def test_a_network_failure_loses_only_its_own_item(tmp_path):
    """When the network step fails for a batch, the evaluator runs its items one by one: only the item that fails
    gets an ``inference`` error, the others their predictions."""
    from ignite.engine import Events
    from monai.data import DataLoader
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    from scripts.batch.fault_tolerance import FaultTolerantEvaluator
    from scripts.io.reader import RadiographReader

    image = synthetic_case(4)[0]
    Image.fromarray(image).save(tmp_path / "dark.png")
    Image.fromarray(np.maximum(image, 250)).save(tmp_path / "bright.png")  # not blank: a few values differ
    Image.fromarray(image[::-1]).save(tmp_path / "flipped.png")
    transform = Compose(
        [
            LoadImaged("image", reader=RadiographReader(), image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            ScaleIntensityRanged("image", 0, 255, 0, 1),
        ]
    )
    names = ("dark.png", "bright.png", "flipped.png")
    data = [{"image": str(tmp_path / n), "case_key": n} for n in names]
    loader = DataLoader(GuardedDataset(data, transform), batch_size=3, collate_fn=collate_skipping_failures)
    network = RefusesBrightImages()
    evaluator = FaultTolerantEvaluator(device="cpu", val_data_loader=loader, network=network)
    seen, images = {}, {}

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _keep(engine):
        for item, output in zip(engine.state.batch, engine.state.output, strict=True):
            seen[item["case_key"]], images[item["case_key"]] = output, item["image"]

    evaluator.run()
    assert sorted(seen) == sorted(names)
    assert seen["bright.png"] == {
        ERROR_KEY: "inference: RuntimeError: cannot segment a bright image",
        STATUS_KEY: "failed",
    }
    for name in ("dark.png", "flipped.png"):
        assert ERROR_KEY not in seen[name] and tuple(seen[name]["pred"].shape[-3:]) == (2, *image.T.shape)
        with torch.no_grad():  # each prediction is its own image's, not another item's of the batch
            torch.testing.assert_close(seen[name]["pred"].as_tensor(), network.conv(images[name][None]).as_tensor()[0])
