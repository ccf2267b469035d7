"""The frontal-chest check: a header saying another body part or a lateral view, and lungs that are not a chest's,
skip an input with a reason (no mask, no SEG), on by default; a switch segments everything; the report says what each
input was taken for, and the review page lists the inputs not taken for chests in a group of their own."""

from __future__ import annotations

import json
from pathlib import Path

import dicom_factory as make
import numpy as np
import pytest
from conftest import REPO, run_bundle
from PIL import Image
from pydicom.dataset import Dataset

from scripts.io.radiograph_view import FRONTAL, NON_FRONTAL, NOT_CHEST, UNKNOWN, header_view
from scripts.lung_shape import CHEST, DOUBTFUL, NOT_A_CHEST, LungShapeModel

KAGGLE = REPO.parent / "shared" / "data" / "kaggle-lungs-512"


def header(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def coded(meaning: str) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "0", "99LOCAL", meaning
    return [item]


@pytest.mark.parametrize(
    "values, verdict, evidence",
    [
        ({"BodyPartExamined": "CHEST", "ViewPosition": "PA"}, FRONTAL, "Body Part Examined CHEST, View Position PA"),
        ({"BodyPartExamined": "HAND"}, NOT_CHEST, "Body Part Examined HAND"),
        (
            {"BodyPartExamined": "CHEST", "ViewPosition": "LL"},
            NON_FRONTAL,
            "Body Part Examined CHEST, View Position LL (lateral)",
        ),
        (
            {"BodyPartExamined": "THORAX", "ViewPosition": "RAO"},
            NON_FRONTAL,
            "Body Part Examined THORAX, View Position RAO (oblique)",
        ),
        ({"AnatomicRegionSequence": coded("Knee")}, NOT_CHEST, "Anatomic Region Knee"),
        ({"ViewCodeSequence": coded("lateral")}, NON_FRONTAL, "View Code lateral"),
        ({"PatientOrientation": ["A", "F"]}, NON_FRONTAL, "Patient Orientation A\\F (lateral)"),
        ({"SeriesDescription": "XR HAND LEFT 2 VIEWS"}, NOT_CHEST, "Series Description XR HAND LEFT 2 VIEWS"),
        ({"SeriesDescription": "CHEST LAT"}, NON_FRONTAL, "Series Description CHEST LAT"),
        # the study covers both views: it says nothing about which this image is
        ({"StudyDescription": "CHEST PA AND LATERAL"}, FRONTAL, "Study Description CHEST PA AND LATERAL"),
        ({"StudyDescription": "ABDOMINAL PAIN", "BodyPartExamined": "PORTABLE"}, UNKNOWN, ""),
        ({"BodyPartExamined": "PELVIS", "SeriesDescription": "CHEST"}, NOT_CHEST, "Body Part Examined PELVIS"),
        ({"ImageLaterality": "L"}, NOT_CHEST, "Image Laterality L (one side of a paired body part)"),
        ({"ImageLaterality": "R", "BodyPartExamined": "CHEST"}, FRONTAL, "Body Part Examined CHEST"),
        ({"ImageLaterality": "U"}, UNKNOWN, ""),
        ({}, UNKNOWN, ""),
    ],
)
def test_the_header_says_what_the_radiograph_shows(values, verdict, evidence):
    assert header_view(header(**values)) == (verdict, evidence)


def test_the_lung_shape_model_tells_chests_from_what_is_not():
    """The shipped model's thresholds on masks drawn here: two lungs where a chest has them are a chest; one lung, a
    mask turned on its side, or nothing at all are not."""
    model = LungShapeModel.load()
    rows, columns = np.mgrid[0:128, 0:128]
    lungs = ((rows - 62) / 42) ** 2 + ((columns - 38) / 20) ** 2 < 1
    lungs |= ((rows - 62) / 40) ** 2 + ((columns - 90) / 19) ** 2 < 1
    verdict, distance, evidence = model.judge(lungs.T)  # MONAI's (x, y)
    assert verdict == CHEST and evidence == f"lung shape {distance:.2f}"
    assert model.judge(np.zeros((128, 128)))[0] == NOT_A_CHEST
    assert model.judge(lungs)[0] in (DOUBTFUL, NOT_A_CHEST)  # turned on its side
    small = np.zeros((128, 128), bool)
    small[50:60, 60:75] = True
    assert model.judge(small.T)[0] == NOT_A_CHEST


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A folder as an archive holds it: frontal chests (PNG and DX DICOM), a hand and a lateral chest by their
    headers, and an image that is no chest, with no header to say so."""
    if not (KAGGLE / "images").is_dir():
        pytest.skip(f"{KAGGLE} not found")
    folder = tmp_path_factory.mktemp("archive")
    chest = np.asarray(Image.open(KAGGLE / "images" / "CHNCXR_0001_0.png").convert("L"))
    Image.fromarray(chest).save(folder / "chest.png")
    frontal = make.radiograph(chest)
    frontal.BodyPartExamined, frontal.ViewPosition = "CHEST", "PA"
    make.save(frontal, folder / "chest.dcm")
    hand = make.radiograph(chest)
    hand.BodyPartExamined = "HAND"
    make.save(hand, folder / "hand.dcm")
    lateral = make.radiograph(chest)
    lateral.ViewPosition = "LL"
    make.save(lateral, folder / "lateral.dcm")
    rows, columns = np.mgrid[0:400, 0:300]
    bone = 60 + 120 * (np.abs(columns - 150) < 25) + 40 * np.sin(rows / 23.0)  # a long bone, not a chest
    Image.fromarray(np.clip(bone, 0, 255).astype(np.uint8)).save(folder / "bone.png")
    return folder


def rows_of(out: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in json.loads((out / "report.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def archive_run(archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("archive_out")
    run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(archive), "--output_dir", str(out)
    )
    return out


@pytest.mark.slow
def test_an_archive_run_skips_what_is_not_a_frontal_chest(archive_run):
    out = archive_run
    rows = rows_of(out)
    assert {name: row["status"] for name, row in rows.items()} == {
        "chest.png": "ok", "chest.dcm": "ok", "hand.dcm": "skipped", "lateral.dcm": "skipped", "bone.png": "skipped",
    }  # fmt: skip
    assert rows["hand.dcm"]["reason"].endswith("not a frontal chest radiograph: Body Part Examined HAND")
    assert rows["hand.dcm"]["taken_as"] == "not a frontal chest (header: Body Part Examined HAND)"
    assert rows["lateral.dcm"]["reason"].endswith("not a frontal chest radiograph: View Position LL (lateral)")
    assert rows["bone.png"]["reason"].startswith("not a frontal chest radiograph: lungs found in")
    assert rows["bone.png"]["taken_as"].startswith("not a frontal chest (image: lungs found in")
    assert rows["chest.dcm"]["taken_as"].startswith(
        "frontal chest (header: Body Part Examined CHEST, View Position PA; image: lung shape "
    )
    assert rows["chest.png"]["taken_as"].startswith("frontal chest (image: lung shape ")
    assert 0 < rows["chest.png"]["lung_shape"] < 5
    for name in ("hand.dcm", "lateral.dcm", "bone.png"):  # no mask, no SEG, no overlay
        assert not any(rows[name].get(column) for column in ("mask_png", "seg_dicom", "overlay")), name
    written = {p.name.split("_")[0] for p in out.glob("*_mask.png")} | {p.name.split("_")[0] for p in out.glob("*.dcm")}
    assert written == {"chest"}
    page = (out / "review_rows.js").read_text()
    assert "not a frontal chest (header: Body Part Examined HAND)" in page
    assert 'id="not_chests"' in (out / "review.html").read_text()


@pytest.mark.slow
def test_the_switch_segments_everything_anyway(archive, tmp_path):
    out = tmp_path / "out"
    run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(archive), "--output_dir", str(out),
        "--inputs#frontal_chest_only", "false",
    )  # fmt: skip
    rows = rows_of(out)
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert {"lung_shape", "review"} <= set(rows["bone.png"]["quality_flags"])
    assert rows["hand.dcm"]["taken_as"].startswith("not checked (frontal_chest_only off) (header: Body Part Examined")
    assert rows["hand.dcm"]["seg_dicom"]


@pytest.mark.slow
def test_the_review_page_shows_what_was_not_taken_for_a_chest(archive_run):
    """As a person sees it, in headless Chromium: the chests as cards, the rest in their own group with what they
    were taken for; the failed and other skipped inputs (none here) apart."""
    import sys

    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extras)")
    sys.path.insert(0, str(REPO))
    from pacs.stack import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or bash pacs/setup_pacs.sh)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto((archive_run / "review.html").as_uri())
            page.wait_for_function("[...document.images].length > 0 && [...document.images].every(i => i.complete)")
            assert page.locator(".card").count() == 2
            group = page.locator("#not_chests")
            assert group.locator("tr.not-chest").count() == 3
            text = group.inner_text()
            assert "not taken for frontal chest radiographs" in text
            assert "hand.dcm" in text and "not a frontal chest (header: Body Part Examined HAND)" in text
            assert "bone.png" in text and "not a frontal chest (image: lungs found in" in text
            assert page.locator("#problems tr.problem").count() == 0
            page.screenshot(path=str(archive_run / "review_page.png"), full_page=True)
        finally:
            browser.close()
