"""The bundle's DICOM SEG as viewers read it: the plane and Frame of Reference that OHIF needs, the referenced UIDs
highdicom and pydicom read back, the IOD validator, and a real OHIF viewer (served beside a real Orthanc, opened in
headless Chromium) that draws the mask exactly over the radiograph, for every kind of DICOM radiograph the bundle
takes."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dicom_factory as make
import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import REPO, dice
from PIL import Image
from pydicom.uid import ComputedRadiographyImageStorage

from scripts.batch.writers import write_dicom_seg

sys.path.insert(0, str(REPO))
from pacs.stack import CHROMIUM, CHROMIUM_ARGS, OhifViewer, Orthanc, missing  # noqa: E402

# Every kind of DICOM radiograph the bundle segments: projection images without patient coordinates, both grey
# scales, portrait and landscape, one lung segment or two. The masks are deliberately asymmetric, so a SEG drawn
# flipped or transposed cannot match.
KINDS = {
    "dx_portrait": {"rows": 480, "columns": 400, "photometric": "MONOCHROME2", "cr": False, "sides": False},
    "cr_landscape_monochrome1": {"rows": 360, "columns": 520, "photometric": "MONOCHROME1", "cr": True, "sides": True},
}


def radiograph_and_mask(kind: str, seed: int = 0) -> tuple[pydicom.Dataset, np.ndarray]:
    """A 12-bit radiograph of ``kind`` (window set so every pixel shows grey) and an asymmetric lung mask for it:
    the image-left lung (label 1, the patient's right) taller and higher than the other (label 2)."""
    spec = KINDS[kind]
    rows, columns = spec["rows"], spec["columns"]
    pixels = (1000 + 2000 * np.random.default_rng(seed).random((rows, columns))).astype(np.uint16)
    source = make.radiograph(
        pixels,
        bits_stored=12,
        photometric=spec["photometric"],
        window=(2000, 4000),
        imager_pixel_spacing=None if spec["cr"] else (0.5, 0.5),
        modality="CR" if spec["cr"] else "DX",
        sop_class=ComputedRadiographyImageStorage if spec["cr"] else make.DigitalXRayImageStorageForPresentation,
        patient_orientation=("L", "F"),
    )
    mask = np.zeros((rows, columns), np.uint8)
    mask[rows // 8 : rows * 5 // 8, columns // 10 : columns * 4 // 10] = 1
    mask[rows * 9 // 20 : rows * 3 // 4, columns * 6 // 10 : columns * 9 // 10] = 2
    return source, mask


def write_seg(folder: Path, kind: str, source: pydicom.Dataset, mask: np.ndarray, name: str = "seg.dcm") -> Path:
    spec = KINDS[kind]
    spacing = None if spec["cr"] else (0.5, 0.5)
    labels = mask if spec["sides"] else (mask > 0).astype(np.uint8)
    return Path(
        write_dicom_seg(str(folder / name), source, labels, pixel_spacing=spacing, label_sides=spec["sides"])[0]
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_seg_carries_the_plane_viewers_need_and_reads_back(tmp_path, kind):
    source, mask = radiograph_and_mask(kind)
    make.save(source, tmp_path / "image.dcm")
    seg_path = write_seg(tmp_path, kind, source, mask)
    seg = pydicom.dcmread(seg_path)
    shared, frame = seg.SharedFunctionalGroupsSequence[0], seg.PerFrameFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert spacing == ([1.0, 1.0] if KINDS[kind]["cr"] else [0.5, 0.5])  # unknown spacing: 1 mm, as viewers take it
    assert seg.FrameOfReferenceUID and "PositionReferenceIndicator" in seg
    assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    # every SEG of one image shares its Frame of Reference (a re-run with other settings gets new SEG UIDs only)
    other = pydicom.dcmread(write_dicom_seg(str(tmp_path / "other.dcm"), source, mask > 0, uid_seed="other")[0])
    assert other.FrameOfReferenceUID == seg.FrameOfReferenceUID and other.SOPInstanceUID != seg.SOPInstanceUID
    read_back = hd.seg.segread(seg_path)
    pixels = read_back.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    expected = mask if KINDS[kind]["sides"] else (mask > 0)
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not found: apt-get install dicom3tools")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_seg_passes_the_iod_validator(tmp_path, kind):
    source, mask = radiograph_and_mask(kind)
    report = subprocess.run(["dciodvfy", str(write_seg(tmp_path, kind, source, mask))], capture_output=True, text=True)
    problems = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith(("Error", "Warning"))]
    assert problems == [], "\n".join(problems)


def overlay_agreement(canvas: np.ndarray, mask: np.ndarray) -> float:
    """Dice between the coloured (segmentation) pixels OHIF drew on the image and ``mask`` placed where the image is.

    The image is the bounding box of the canvas's non-black pixels (every pixel of the test radiographs shows grey);
    the segmentation is what is coloured there (grey pixels have equal red, green and blue)."""
    shown = canvas.max(axis=2) > 20
    rows, columns = np.flatnonzero(shown.any(axis=1)), np.flatnonzero(shown.any(axis=0))
    picture = canvas[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1].astype(int)
    coloured = picture.max(axis=2) - picture.min(axis=2) > 40
    expected = np.asarray(Image.fromarray((mask > 0).astype(np.uint8)).resize(coloured.shape[::-1], Image.NEAREST))
    return dice(coloured, expected)


def ohif_canvas(page, url: str, timeout: float = 90.0) -> np.ndarray:
    """The pixels of the OHIF viewport at ``url`` once a segmentation is drawn on it (or the last ones after
    ``timeout`` seconds)."""
    page.goto(url)
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while True:
        data = canvas.evaluate('c => c.toDataURL("image/png")')
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB"))
        drawn = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 40
        if drawn.sum() > 500 or time.monotonic() > deadline:
            time.sleep(1)  # let the last tiles of the labelmap land
            data = canvas.evaluate('c => c.toDataURL("image/png")')
            return np.asarray(Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB"))
        time.sleep(0.5)


@pytest.mark.slow
def test_ohif_draws_the_seg_over_the_radiograph(tmp_path):
    """Each kind's SEG, stored in Orthanc with its radiograph and opened in OHIF, lies exactly on the mask's pixels;
    a SEG of the mirrored mask, stored the same way, does not (the check sees a flip)."""
    absent = missing()
    if absent:
        pytest.skip("needs " + "; ".join(absent))
    from playwright.sync_api import sync_playwright

    cases = []
    for index, kind in enumerate(sorted(KINDS)):
        source, mask = radiograph_and_mask(kind, seed=index)
        folder = tmp_path / kind
        folder.mkdir()
        make.save(source, folder / "image.dcm")
        cases.append((kind, source, mask, write_seg(folder, kind, source, mask)))
    mirrored_source, mirrored_mask = radiograph_and_mask("dx_portrait", seed=9)
    make.save(mirrored_source, tmp_path / "mirrored.dcm")
    mirrored = write_seg(tmp_path, "dx_portrait", mirrored_source, mirrored_mask[:, ::-1], name="mirrored_seg.dcm")
    cases.append(("mirrored", mirrored_source, mirrored_mask, mirrored))

    with Orthanc(tmp_path / "orthanc") as pacs, OhifViewer(pacs.url) as viewer, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            agreement = {}
            for kind, source, mask, seg_path in cases:
                image_file = tmp_path / ("mirrored.dcm" if kind == "mirrored" else f"{kind}/image.dcm")
                pacs.upload(image_file)
                pacs.upload(seg_path)
                seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
                canvas = ohif_canvas(page, viewer.study_url(str(source.StudyInstanceUID), str(seg.SeriesInstanceUID)))
                Image.fromarray(canvas).save(tmp_path / f"{kind}_ohif.png")  # kept when the test fails: look at it
                agreement[kind] = overlay_agreement(canvas, mask)
        finally:
            browser.close()
    for kind in KINDS:
        assert agreement[kind] > 0.95, f"{kind}: OHIF drew the SEG off the mask (Dice {agreement[kind]:.3f})"
    assert agreement["mirrored"] < 0.6, f"a mirrored SEG passed the check (Dice {agreement['mirrored']:.3f})"
