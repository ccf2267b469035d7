"""Frontal radiographs stored rotated or mirrored (Patient Orientation ``H\\L``, ``R\\F``, ...): turned upright for
the network, the mask put back on the stored grid, in the mask PNG and the DICOM SEG."""

from __future__ import annotations

import json
from pathlib import Path

import dicom_factory as make
import numpy as np
import pydicom
import pytest
from conftest import REPO, dice, run_bundle
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged
from PIL import Image

from scripts.data.synthetic import synthetic_case
from scripts.io.reader import RadiographReader
from scripts.transforms.orientation import UprightRadiographd, upright_operation

KAGGLE = REPO.parent / "shared" / "data" / "kaggle-lungs-512"

# the eight ways to store an upright image (numpy rows x columns), each with what Patient Orientation then says
STORED = {
    "L\\F": lambda a: a,
    "R\\F": lambda a: a[:, ::-1],
    "L\\H": lambda a: a[::-1, :],
    "R\\H": lambda a: a[::-1, ::-1],
    "F\\L": lambda a: a.T,
    "H\\L": lambda a: a.T[:, ::-1],
    "F\\R": lambda a: a.T[::-1, :],
    "H\\R": lambda a: a.T[::-1, ::-1],
}


def orientation_of(stored) -> str:
    """Patient Orientation of ``stored(upright)``: which way the patient runs along its rows and down its columns,
    traced on coordinate maps of an upright image (along its rows: the patient's left, L; down: the feet, F)."""
    rows, columns = np.meshgrid(np.arange(7), np.arange(5), indexing="ij")
    directions = []
    for axis in (1, 0):  # along a row (columns increase), down a column (rows increase)
        moved = [np.diff(stored(coordinate), axis=axis).ravel()[0] for coordinate in (rows, columns)]
        old = int(np.argmax(np.abs(moved)))
        directions.append({(0, 1): "F", (0, -1): "H", (1, 1): "L", (1, -1): "R"}[(old, int(np.sign(moved[old])))])
    return "\\".join(directions)


def test_the_table_of_stored_orientations_is_right():
    assert {name: orientation_of(stored) for name, stored in STORED.items()} == {name: name for name in STORED}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_stored_radiograph_is_turned_upright_and_its_prediction_put_back(tmp_path, orientation):
    upright = synthetic_case(2)[0]
    stored = np.ascontiguousarray(STORED[orientation](upright))
    ds = make.radiograph(stored, patient_orientation=tuple(orientation.split("\\")))
    path = make.save(ds, tmp_path / "stored.dcm")
    preprocessing = Compose(
        [
            LoadImaged("image", reader=RadiographReader(), image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            UprightRadiographd("image"),
        ]
    )
    item = preprocessing({"image": str(path)})
    np.testing.assert_array_equal(np.asarray(item["image"][0]), upright.T)  # MONAI's (x, y): the upright image
    item["pred"] = item["image"].clone()  # a "prediction" on the upright grid: the image itself
    back = Invertd("pred", transform=preprocessing, orig_keys="image")(item)
    np.testing.assert_array_equal(np.asarray(back["pred"][0]), stored.T)  # on the stored grid again


def test_orientations_that_do_not_say_leave_the_image_as_it_is():
    for orientation in ("", "L", "A\\F", "P\\H", "L\\R", "H\\F", "X\\Y", "L\\F"):
        assert upright_operation(orientation) in (None, (0, False)), orientation
    assert upright_operation("l\\f") == (0, False) and upright_operation("LH\\F") == (0, False)  # oblique: dominant


@pytest.mark.slow
def test_rotated_chests_get_the_upright_chest_s_mask_on_their_own_grid(tmp_path):
    """A real radiograph stored in each of the eight orientations, segmented by ``inference.json`` with the shipped
    model: each mask PNG and SEG is the upright radiograph's mask, turned as the file is turned."""
    if not (KAGGLE / "images").is_dir():
        pytest.skip(f"{KAGGLE} not found")
    name = "MCUCXR_0001_0.png"
    upright = np.asarray(Image.open(KAGGLE / "images" / name).convert("L"))
    truth = np.asarray(Image.open(KAGGLE / "masks" / name).convert("L")) > 127
    inputs = tmp_path / "in"
    for index, (orientation, stored) in enumerate(STORED.items()):
        ds = make.radiograph(np.ascontiguousarray(stored(upright)), patient_orientation=tuple(orientation.split("\\")))
        make.save(ds, inputs / f"o{index}.dcm")
    unlabelled = make.radiograph(np.ascontiguousarray(STORED["H\\L"](upright)))  # turned, not saying so
    make.save(unlabelled, inputs / "turned_without_orientation.dcm")
    out = tmp_path / "out"
    run_bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(inputs), "--output_dir", str(out))
    rows = {Path(r["input"]).stem: r for r in json.loads((out / "report.json").read_text())["rows"]}
    turned = rows.pop("turned_without_orientation")  # nothing says it is turned: the frontal-chest check catches it
    assert turned["status"] == "skipped" or "lung_shape" in turned["quality_flags"], turned
    assert {r["status"] for r in rows.values()} == {"ok"}
    masks = {stem: np.asarray(Image.open(out / row["mask_png"])) > 0 for stem, row in rows.items()}
    reference = masks["o0"]  # upright as stored
    assert dice(reference, truth) > 0.9
    for index, (orientation, stored) in enumerate(STORED.items()):
        np.testing.assert_array_equal(masks[f"o{index}"], stored(reference), err_msg=orientation)
        seg = pydicom.dcmread(out / rows[f"o{index}"]["seg_dicom"]).pixel_array
        np.testing.assert_array_equal(seg > 0, stored(reference), err_msg=orientation)
