"""All masks of a run in one run-length-encoded archive (``--write_rle true``): the encoding is CheXmask's, and the
archive decodes back to exactly the mask PNGs a run writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from conftest import run_bundle, synthetic_folder
from PIL import Image

from scripts.batch.report import EXIT_OK
from scripts.batch.rle import ARCHIVE_NAME, decode_mask, encode_mask, read_mask_archive, write_masks_as_png


def test_encoding_is_one_based_row_major_start_length():
    mask = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1]], np.uint8)
    assert encode_mask(mask) == "2 3 9 1"  # pixels 2-4 (end of row 1, start of row 2) and the last one
    assert encode_mask(np.zeros((3, 4))) == "" and encode_mask(np.ones((2, 2))) == "1 4"
    assert np.array_equal(decode_mask("2 3 9 1", 3, 3), mask > 0)


@pytest.mark.parametrize("seed", range(5))
def test_random_masks_decode_to_themselves(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 60, 2))
    mask = rng.random(shape) < rng.random()
    assert np.array_equal(decode_mask(encode_mask(mask), *shape), mask)


def test_a_run_outside_the_image_is_an_error():
    with pytest.raises(ValueError, match="3x3"):
        decode_mask("8 3", 3, 3)
    with pytest.raises(ValueError):
        decode_mask("1", 3, 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return synthetic_folder(tmp_path_factory.mktemp("archive") / "in", files=6, dicom_every=3, dicom_dir="sub")


def test_archive_decodes_to_the_mask_pngs_exactly(folder, model_args, tmp_path):
    out = tmp_path / "out"
    run_bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(folder), "--output_dir",
               str(out), *model_args, "--write_rle", "true", "--label_sides", "true", "--write_nifti", "true",
               expect=EXIT_OK)  # fmt: skip
    report = {r["input"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    rows = list(read_mask_archive(str(out / ARCHIVE_NAME)))
    assert [r["input"] for r in rows] == list(report)  # one row per segmented image, in the report's order
    for row in rows:
        expected = report[row["input"]]
        png = np.asarray(Image.open(out / expected["mask_png"]))
        assert np.array_equal(row["lungs"].view(np.uint8) * 255, png)
        assert (row["height"], row["width"]) == png.shape == (expected["rows"], expected["columns"])
        assert row["lung_area_px"] == expected["lung_area_px"] == row["lungs"].sum()
        labels = np.asarray(nibabel.load(out / expected["mask_nifti"]).dataobj).T  # the run's side labels
        assert np.array_equal(row["right_lung"], labels == 1) and np.array_equal(row["left_lung"], labels == 2)
    # the records hold the masks for the archive; the report does not
    assert "lungs" not in (out / "report.csv").read_text().splitlines()[0]

    # without PNGs: the archive alone, decoded to the same masks; a re-run reuses every row and keeps them all
    archive_only = tmp_path / "archive_only"
    args = ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(folder), "--output_dir",
            str(archive_only), *model_args]  # fmt: skip
    args += ["--write_rle", "true", "--write_png", "false", "--write_overlay", "false"]
    run_bundle(*args, expect=EXIT_OK)
    assert not list(archive_only.rglob("*_mask.png"))
    decoded = write_masks_as_png(str(archive_only / ARCHIVE_NAME), str(tmp_path / "decoded"))
    assert len(decoded) == len(report)
    for name, expected in report.items():
        stem = name.rsplit(".", 1)[0]
        again = np.asarray(Image.open(tmp_path / "decoded" / f"{stem}_mask.png"))
        assert np.array_equal(again, np.asarray(Image.open(out / expected["mask_png"])))
    first = gzip.open(archive_only / ARCHIVE_NAME, "rt").read()
    run_bundle(*args, expect=EXIT_OK)
    rows = json.loads((archive_only / "report.json").read_text())["rows"]
    assert all(r["reused"] for r in rows)
    assert gzip.open(archive_only / ARCHIVE_NAME, "rt").read() == first
