"""Batch inference as users run it: `python -m monai.bundle run --config_file configs/inference.json` on folders of
DICOM (every encoding), PNG, JPEG and NIfTI files with broken and non-image files among them, with the real FCN
trained on the synthetic phantoms (whose heart sits on the image's right, so a flip or transposition cannot pass)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dicom_factory as make
import highdicom as hd
import nibabel
import numpy as np
import pydicom
import pytest
from conftest import BUNDLE, dice, run_bundle
from PIL import Image

from scripts.batch.report import EXIT_INPUTS_FAILED, EXIT_OK
from scripts.data.synthetic import synthetic_case

pytestmark = pytest.mark.slow


def run_inference(*args: str, expect: int):
    """inference.json as a user runs it, its exit status checked."""
    return run_bundle("run", "--config_file", "configs/inference.json", *args, expect=expect)


def read_report(out: Path) -> dict[str, dict]:
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    by_input = {r["input"]: r for r in rows}
    assert len(by_input) == len(rows), "an input appears twice in the report"
    return by_input


def mask_of(out: Path, row: dict) -> np.ndarray:
    mask = np.asarray(Image.open(out / row["mask_png"]))
    assert set(np.unique(mask)) <= {0, 255}
    return mask > 0


def phantom(orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic case (image, mask) with rows - columns > 60 (``portrait``) or columns - rows > 60."""
    sign = 1 if orientation == "portrait" else -1
    seed = next(s for s in range(200) if sign * np.subtract(*synthetic_case(s)[0].shape) > 60)
    return synthetic_case(seed)


@pytest.fixture(scope="module")
def mixed_folder(model_args, tmp_path_factory) -> dict:
    """A PACS-like export: DICOMs in every encoding and layout, PNG/JPEG/NIfTI, non-images and broken files; the
    whole folder is segmented once (NIfTI output on)."""
    root = tmp_path_factory.mktemp("mixed")
    src = root / "in"
    portrait, portrait_mask = phantom("portrait")
    landscape, landscape_mask = phantom("landscape")
    other = synthetic_case(7)[0]
    wide = landscape.astype(np.uint16) * 16 + np.random.default_rng(1).integers(0, 16, landscape.shape, dtype=np.uint16)
    study = pydicom.uid.generate_uid()
    files = {
        # 12-bit stored values with a rescale, spacing from ImagerPixelSpacing, twin PNG below
        "pa_portrait.dcm": make.radiograph(
            portrait.astype(np.uint16) * 12 + 100,
            bits_stored=12,
            slope=0.25,
            intercept=-5.0,
            imager_pixel_spacing=(0.2, 0.15),
            study_uid=study,
            patient_orientation=("L", "F"),
        ),
        "landscape/IM0001": make.radiograph(landscape, pixel_spacing=(0.14, 0.14)),  # no extension
        "mono/IM_M1.dcm": make.radiograph(
            4095 - other.astype(np.uint16) * 16, bits_stored=12, photometric="MONOCHROME1"
        ),
        "mono/IM_M2.dcm": make.radiograph(other.astype(np.uint16) * 16, bits_stored=12),
        # the phantom in a narrow band of a 12-bit range with extreme corner pixels: only the window shows it
        "window/IM_W.dcm": make.radiograph(_banded(portrait), bits_stored=12, window=(1510.0, 1021.0)),
        "compressed/reference.dcm": make.radiograph(wide, bits_stored=12),
        "compressed/rle.dcm": make.compressed(make.radiograph(wide, bits_stored=12), pydicom.uid.RLELossless),
        "compressed/jpegls.dcm": make.compressed(make.radiograph(wide, bits_stored=12), pydicom.uid.JPEGLSLossless),
        "compressed/j2k.dcm": make.compressed(make.radiograph(wide, bits_stored=12), pydicom.uid.JPEG2000Lossless),
        "compressed/jpeg_lossless": make.jpeg_lossless_sv1(wide, bits_stored=12),
        "compressed/baseline.dcm": make.jpeg_baseline(landscape),
        "rgb/sc.dcm": make.rgb_secondary_capture(np.repeat(other[..., None], 3, axis=2)),
        "nested/deeper/still/IM0005": make.radiograph(other),
        "non_images/sr.dcm": make.structured_report(study),
        "non_images/kos.dcm": make.key_object_selection(study),
        "non_images/pr.dcm": make.presentation_state(study),
        "non_images/report.dcm": make.encapsulated_pdf(study),
        "non_images/ct.dcm": make.radiograph(other, modality="CT", sop_class=make.CT_IMAGE),
        "non_images/frames.dcm": make.radiograph(np.stack([other, other])),
    }
    for name, ds in files.items():
        make.save(ds, src / name)
    make.write_dicomdir(src / "media", [make.radiograph(other)])
    (src / "png").mkdir()
    Image.fromarray(portrait).save(src / "png" / "pa_portrait.png")
    # the same radiograph on a larger canvas padded with its darkest value below and to the right, as the Montgomery
    # PNGs are (with 0)
    padded = np.pad(portrait, ((0, PAD_ROWS), (0, PAD_COLUMNS)), constant_values=portrait.min())
    Image.fromarray(padded).save(src / "png" / "pa_portrait_padded.png")
    Image.fromarray(other).save(src / "png" / "we ird ü (1).png")
    Image.fromarray(other).save(src / "png" / "photo.jpg", quality=95)
    nibabel.save(nibabel.Nifti1Image(landscape.T.copy(), np.diag([0.3, 0.3, 1, 1])), src / "nifti.nii.gz")
    good = (src / "pa_portrait.dcm").read_bytes()
    (src / "broken").mkdir()
    (src / "broken" / "truncated.dcm").write_bytes(good[: len(good) * 2 // 3])
    (src / "broken" / "empty.dcm").write_bytes(b"")
    (src / "broken" / "garbage.bin").write_bytes(os.urandom(2000))
    (src / "notes.txt").write_text("exported by PACS")

    out = root / "out"
    proc = run_inference(
        "--dataset_dir",
        str(src),
        "--output_dir",
        str(out),
        "--write_nifti",
        "true",
        *model_args,
        expect=EXIT_INPUTS_FAILED,
    )
    return {
        "src": src,
        "out": out,
        "log": proc.stdout + proc.stderr,
        "report": read_report(out),
        "portrait": (portrait, portrait_mask),
        "landscape": (landscape, landscape_mask),
    }


PAD_ROWS, PAD_COLUMNS = 40, 30


def _banded(image: np.ndarray) -> np.ndarray:
    banded = image.astype(np.uint16) * 4 + 1000  # 1000..2020 of 0..4095
    banded[0, 0], banded[-1, -1] = 0, 4095
    return banded


def test_every_file_is_accounted_for_once(mixed_folder):
    files = sorted(str(p.relative_to(mixed_folder["src"])) for p in mixed_folder["src"].rglob("*") if p.is_file())
    report = mixed_folder["report"]
    assert sorted(report) == files  # exactly one row per discovered file
    expected_reason = {
        "non_images/sr.dcm": "structured report",
        "non_images/kos.dcm": "Key Object Selection",
        "non_images/pr.dcm": "presentation state",
        "non_images/report.dcm": "Encapsulated PDF",
        "non_images/ct.dcm": "modality CT",
        "non_images/frames.dcm": "multi-frame",
        "media/DICOMDIR": "DICOMDIR",
        "notes.txt": "not an image",
        "broken/empty.dcm": "empty file",
        "broken/garbage.bin": "unrecognised file",
        "broken/truncated.dcm": "pixel data",
    }
    for name, row in report.items():
        if name in expected_reason:
            assert expected_reason[name] in row["reason"], row
            assert row["status"] == ("failed" if name.startswith("broken/") else "skipped"), row
            assert not row["mask_png"]
        else:
            assert row["status"] == "ok", row
            assert (mixed_folder["out"] / row["mask_png"]).is_file() and (
                mixed_folder["out"] / row["overlay"]
            ).is_file()
    summary = json.loads((mixed_folder["out"] / "report.json").read_text())["summary"]
    assert summary["failed"] == 3 and summary["exit_status"] == EXIT_INPUTS_FAILED
    assert summary["files_found"] == len(files)


@pytest.mark.parametrize("orientation, name", [("portrait", "pa_portrait.dcm"), ("landscape", "landscape/IM0001")])
def test_masks_line_up_with_the_image_pixel_for_pixel(mixed_folder, orientation, name):
    image, truth = mixed_folder[orientation]
    row = mixed_folder["report"][name]
    mask = mask_of(mixed_folder["out"], row)
    assert mask.shape == image.shape == (int(row["rows"]), int(row["columns"]))
    score = dice(mask, truth)
    assert score > 0.9
    # the phantom is asymmetric: the mask must be clearly closer to the truth than to either flip of it, by at least
    # half of what a flip changes in the truth itself (a flipped or transposed mask fails this by a wide margin)
    for flipped in (truth[:, ::-1], truth[::-1]):
        asymmetry = 1.0 - dice(truth, flipped)
        assert asymmetry > 0.1
        assert dice(mask, flipped) < score - 0.5 * asymmetry
    # the patient's right lung in the report is the mask's image-left lung, which is the truth's image-left lung (the
    # area itself is the model's: a small model trained on synthetic data draws it 10-20% larger or smaller)
    half = truth.shape[1] // 2
    mask_right = int((mask[:, :half] > 0).sum())
    assert abs(int(row["right_lung_area_px"]) - mask_right) <= 0.02 * mask_right
    assert dice(mask[:, :half], truth[:, :half]) > 0.85


def test_pixel_encodings_give_the_same_mask(mixed_folder):
    out, report = mixed_folder["out"], mixed_folder["report"]
    png_twin = mask_of(out, report["png/pa_portrait.png"])
    rescaled = mask_of(out, report["pa_portrait.dcm"])
    assert (png_twin != rescaled).sum() <= 0.002 * png_twin.sum()  # 12-bit rescaled DICOM vs 8-bit PNG
    np.testing.assert_array_equal(mask_of(out, report["mono/IM_M1.dcm"]), mask_of(out, report["mono/IM_M2.dcm"]))
    reference = mask_of(out, report["compressed/reference.dcm"])
    for name in ("rle.dcm", "jpegls.dcm", "j2k.dcm", "jpeg_lossless"):
        np.testing.assert_array_equal(mask_of(out, report[f"compressed/{name}"]), reference, err_msg=name)
    assert dice(mask_of(out, report["compressed/baseline.dcm"]), reference) > 0.97
    # without its window the phantom is invisible in the band (no lungs found); with it, the image differs from the
    # 8-bit twin only by rounding and the clipped corners, which a small model trained on synthetic data still feels
    assert dice(mask_of(out, report["window/IM_W.dcm"]), png_twin) > 0.9
    assert "window 1510/1021" in report["window/IM_W.dcm"]["pixel_processing"]
    assert "MONOCHROME1 inverted" in report["mono/IM_M1.dcm"]["pixel_processing"]
    np.testing.assert_array_equal(mask_of(out, report["rgb/sc.dcm"]), mask_of(out, report["mono/IM_M2.dcm"]))
    assert dice(mask_of(out, report["png/photo.jpg"]), mask_of(out, report["rgb/sc.dcm"])) > 0.97
    nifti = mask_of(out, report["nifti.nii.gz"])
    assert dice(nifti, mixed_folder["landscape"][1]) > 0.9


def test_padding_around_the_radiograph_changes_nothing_but_the_canvas(mixed_folder):
    # the padding is cropped before the network and restored after it: without the crop the padded canvas would be
    # squeezed into the network's square input with the chest, and the masks would differ
    out, report = mixed_folder["out"], mixed_folder["report"]
    plain = mask_of(out, report["png/pa_portrait.png"])
    padded = mask_of(out, report["png/pa_portrait_padded.png"])
    rows, columns = plain.shape
    assert padded.shape == (rows + PAD_ROWS, columns + PAD_COLUMNS)
    assert plain.any()
    np.testing.assert_array_equal(padded[:rows, :columns], plain)
    assert not padded[rows:].any() and not padded[:, columns:].any()


def test_dicom_seg_references_its_source_and_equals_the_png(mixed_folder):
    out, row = mixed_folder["out"], mixed_folder["report"]["pa_portrait.dcm"]
    source = pydicom.dcmread(mixed_folder["src"] / "pa_portrait.dcm")
    seg = pydicom.dcmread(out / row["seg_dicom"])
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SOPInstanceUID == row["seg_sop_instance_uid"]
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.2, 0.15]
    read_back = hd.seg.segread(out / row["seg_dicom"])
    pixels = read_back.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)
    np.testing.assert_array_equal(pixels[0] > 0, mask_of(out, row))
    assert read_back.get_segment_description(1).segmented_property_type.meaning == "Lung"


def test_spacing_reaches_the_report_and_the_nifti(mixed_folder):
    out, report = mixed_folder["out"], mixed_folder["report"]
    row = report["pa_portrait.dcm"]
    assert row["pixel_spacing_mm"] == "0.2\\0.15"
    assert row["spacing_source"] == "ImagerPixelSpacing (detector plane, no EstimatedRadiographicMagnificationFactor)"
    assert float(row["lung_area_cm2"]) == pytest.approx(int(row["lung_area_px"]) * 0.2 * 0.15 / 100, abs=0.01)
    assert float(row["right_lung_area_cm2"]) + float(row["left_lung_area_cm2"]) == pytest.approx(
        float(row["lung_area_cm2"]), abs=0.02
    )
    nifti = nibabel.load(out / row["mask_nifti"])
    assert nifti.shape == (int(row["columns"]), int(row["rows"]))  # MONAI (x, y)
    np.testing.assert_allclose(np.diag(nifti.affine)[:2], [0.15, 0.2])
    np.testing.assert_array_equal(np.asarray(nifti.dataobj).T > 0, mask_of(out, row))
    assert report["png/pa_portrait.png"]["lung_area_cm2"] == ""  # no spacing in a PNG
    assert report["landscape/IM0001"]["spacing_source"] == "PixelSpacing"


def test_output_names_are_safe_and_inside_the_output_folder(mixed_folder):
    out = mixed_folder["out"]
    outputs = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in outputs)
    assert not [p for p in outputs if p.name.startswith(".tmp-")]
    weird = mixed_folder["report"]["png/we ird ü (1).png"]["mask_png"]
    assert weird.startswith("png/we_ird_") and weird.endswith("_mask.png") and weird.isascii()
    overlay = Image.open(out / mixed_folder["report"]["pa_portrait.dcm"]["overlay"])
    rows, columns = mixed_folder["portrait"][0].shape
    assert overlay.mode == "RGB" and overlay.size == (round(columns * 256 / rows), 256)


def finished_records(out: Path) -> list[dict]:
    """The rows a run has recorded: the complete lines of its ``records/*.jsonl`` files."""
    lines = [line for p in (out / "records").glob("*.jsonl") for line in p.read_text().splitlines(keepends=True)]
    return [json.loads(line) for line in lines if line.endswith("\n")]


def test_interrupted_run_resumes_without_losing_or_duplicating(model_args, tmp_path):
    src, out, files = tmp_path / "in", tmp_path / "out", 24
    for seed in range(files):
        image = synthetic_case(seed)[0]
        if seed % 2:
            make.save(make.radiograph(image), src / f"IM{seed:04d}")
        else:
            src.mkdir(exist_ok=True)
            Image.fromarray(image).save(src / f"case{seed}.png")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(src),
        "--output_dir",
        str(out),
        *model_args,
        "--batch_size",
        "1",
        "--write_processes",
        "0",  # each row recorded as its item finishes: the kill comes well before the last one
    ]
    proc = subprocess.Popen(command, cwd=BUNDLE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(finished_records(out)) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")}
    assert (
        3 <= len(finished_records(out)) < files and not (out / "report.csv").exists()
    ), "the run was not interrupted half-way"

    run_inference("--dataset_dir", str(src), "--output_dir", str(out), *model_args, expect=EXIT_OK)
    report = read_report(out)
    assert len(report) == files and all(r["status"] == "ok" for r in report.values())
    reused = {r["mask_png"] for r in report.values() if r["reused"] == "yes"}
    assert len(reused) >= 3 and reused <= set(done)
    assert all((out / name).stat().st_mtime_ns == done[name] for name in reused)  # not segmented again
    assert len(list(out.glob("*_mask.png"))) == files and len(list(out.glob("*_seg.dcm"))) == files // 2
    assert not list(out.rglob(".tmp-*"))

    run_inference(
        "--dataset_dir", str(src), "--output_dir", str(out), *model_args, "--overwrite", "true", expect=EXIT_OK
    )
    report = read_report(out)
    assert len(report) == files and not [r for r in report.values() if r["reused"] == "yes"]


def test_datalist_with_right_and_left_lung_labels(model_args, tmp_path):
    image, truth = phantom("landscape")
    Image.fromarray(image).save(tmp_path / "a.png")
    make.save(make.radiograph(image, patient_orientation=("R", "F")), tmp_path / "sub" / "flipped.dcm")
    (tmp_path / "list.json").write_text(json.dumps({"testing": [{"image": "a.png"}, {"image": "sub/flipped.dcm"}]}))
    out = tmp_path / "out"
    run_inference(
        "--dataset_dir",
        str(tmp_path / "list.json"),
        "--output_dir",
        str(out),
        "--label_sides",
        "true",
        "--write_nifti",
        "true",
        *model_args,
        expect=EXIT_OK,
    )
    report = read_report(out)
    assert sorted(report) == ["a.png", "sub/flipped.dcm"]
    for name, right_on_image_left in (("a.png", True), ("sub/flipped.dcm", False)):
        labels = np.asarray(nibabel.load(out / report[name]["mask_nifti"]).dataobj).T  # (rows, columns)
        assert set(np.unique(labels)) == {0, 1, 2}
        right_x, left_x = (np.nonzero(labels == v)[1].mean() for v in (1, 2))
        assert (right_x < left_x) == right_on_image_left, name
        assert int(report[name]["right_lung_area_px"]) == (labels == 1).sum()
        assert int(report[name]["left_lung_area_px"]) == (labels == 2).sum()
        np.testing.assert_array_equal(labels > 0, mask_of(out, report[name]))
    seg = hd.seg.segread(out / report["sub/flipped.dcm"]["seg_dicom"])
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Right lung", "Left lung"]
