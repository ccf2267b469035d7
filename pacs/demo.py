"""A local clinical-workflow demo in one command: a PACS (Orthanc), the OHIF viewer, and the bundle segmenting what
the PACS holds, all on loopback.

    .venv/bin/python pacs/demo.py [--folder DICOM_FOLDER] [--ckpt_path bundle/models/model.pt]

1. starts Orthanc with DICOMweb on a free port of 127.0.0.1 (its database in ``--workdir``) and the OHIF viewer beside
   it (``pacs/stack.py``);
2. stores the DICOM files of ``--folder`` in it, or, without one, six synthetic DX radiographs (the bundle's
   synthetic default set, written as DICOM: not real patients);
3. runs the bundle's batch inference over the PACS (``--dicomweb#url``), which stores a DICOM SEG of each radiograph
   back, and prints the report's counts;
4. with ``--monailabel``, starts MONAI Label on the same PACS (``monailabel/start_server.sh --studies <DICOMweb URL>``:
   the radiographs to label, final labels stored back as DICOM SEG; the bundle folder's own weights,
   ``bundle/models/model.pt``; set up with ``bash monailabel/setup_monailabel.sh``);
5. prints the viewer's address and a link per study, and keeps everything up until Ctrl-C, then stops what it started.

``--screenshot FILE`` saves what OHIF shows for the first study (its SEG over the radiograph, in headless Chromium)
and exits instead of waiting. ``bash pacs/setup_pacs.sh`` installs the stack; the weights are the bundle's shipped
``bundle/models/model.pt`` unless ``--ckpt_path`` names others (training writes ``models/model_trained.pt``).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
BUNDLE = REPOSITORY / "bundle"
sys.path[:0] = [str(REPOSITORY), str(BUNDLE)]

from pacs.stack import CHROMIUM, CHROMIUM_ARGS, OhifViewer, Orthanc, free_port, missing  # noqa: E402

MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPOSITORY / ".venv-monailabel"))


def synthetic_dicoms(folder: Path, count: int = 6) -> Path:
    """``count`` synthetic 12-bit DX radiographs (the bundle's synthetic cases), one study each."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    from scripts.data.synthetic import synthetic_case

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = synthetic_case(index)[0].astype(np.uint16) * 16
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.PatientName = f"DEMO{index:03d}", f"Synthetic^Case{index}"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", str(index + 1), ""
        ds.StudyDescription, ds.SeriesDescription = "Chest PA (synthetic)", "PA"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
        ds.PatientOrientation, ds.ImagerPixelSpacing = ["L", "F"], [0.5, 0.5]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"synthetic_{index:02d}.dcm", enforce_file_format=True)
    return folder


def segment(pacs: Orthanc, output_dir: Path, ckpt_path: Path) -> list[dict]:
    """Run the bundle over the PACS; the report's rows."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--dicomweb#url", pacs.dicomweb_url, "--output_dir", str(output_dir),
               "--ckpt_path", str(ckpt_path)]  # fmt: skip
    print("segmenting:", " ".join(command[2:]), flush=True)
    proc = subprocess.run(command, cwd=BUNDLE)
    if proc.returncode not in (0, 3):  # 3: some inputs failed, as the report says
        raise SystemExit(f"the bundle stopped with exit status {proc.returncode}")
    with open(output_dir / "report.csv") as f:
        return list(csv.DictReader(f))


def screenshot(viewer: OhifViewer, study_uid: str, seg_series_uid: str, path: Path) -> None:
    """What OHIF shows of the study with its SEG, as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(viewer.study_url(study_uid, seg_series_uid))
            page.locator("canvas.cornerstone-canvas").first.wait_for(timeout=90000)
            for label in ("Skip all", "Confirm and hide"):  # the viewer's first-visit tour and notice
                button = page.get_by_text(label, exact=True)
                if button.count():
                    button.first.click()
            time.sleep(5)  # the SEG is fetched and drawn after the image
            page.screenshot(path=str(path))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", help="DICOM files to store in the PACS (default: six synthetic DX)")
    parser.add_argument("--ckpt_path", default=str(BUNDLE / "models" / "model.pt"))
    parser.add_argument("--workdir", help="where the PACS database and the outputs go (default: a temporary folder)")
    parser.add_argument("--viewer_port", type=int, default=None, help="the viewer's port (default: a free one)")
    parser.add_argument("--screenshot", help="save what OHIF shows of the first study to this PNG and exit")
    parser.add_argument("--monailabel", action="store_true", help="also start MONAI Label on the PACS")
    options = parser.parse_args()
    absent = missing(browser=bool(options.screenshot))
    if options.monailabel and not (MONAILABEL_VENV / "bin" / "monailabel").exists():
        absent.append(f"MONAI Label in {MONAILABEL_VENV} (bash monailabel/setup_monailabel.sh)")
    if absent:
        raise SystemExit("the demo needs " + "; ".join(absent))
    ckpt_path = Path(options.ckpt_path).resolve()
    if not ckpt_path.exists():
        raise SystemExit(
            f"no weights at {ckpt_path}: train first (cd bundle && python -m monai.bundle run training --config_file "
            "configs/train.json) or give --ckpt_path"
        )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.workdir or scratch).resolve()
        folder = Path(options.folder).resolve() if options.folder else synthetic_dicoms(work / "synthetic")
        with Orthanc(work / "orthanc") as pacs, OhifViewer(pacs.url, port=options.viewer_port) as viewer:
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            stored = sum(1 for path in files if _store(pacs, path))
            print(f"PACS: Orthanc at {pacs.url} (DICOMweb {pacs.dicomweb_url}), {stored} of {len(files)} files stored")
            rows = segment(pacs, work / "outputs", ckpt_path)
            counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
            print(f"segmented: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; "
                  f"report: {work / 'outputs' / 'report.csv'}")  # fmt: skip
            studies = sorted({r["input"].split("/")[0] for r in rows if r["status"] == "ok"})
            if options.screenshot:
                first = next(r for r in rows if r["status"] == "ok")
                seg = _seg_series(work / "outputs" / first["seg_dicom"])
                screenshot(viewer, first["input"].split("/")[0], seg, Path(options.screenshot).resolve())
                print(f"screenshot: {options.screenshot}")
                return
            label = start_monailabel(pacs, work / "monailabel") if options.monailabel else None
            print(f"\nOHIF viewer: {viewer.url}/  (open a study, then its SEG series to see the lungs)")
            for study in studies:
                print(f"  {viewer.study_url(study)}")
            print("Ctrl-C stops what this script started.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("\nstopping")
            finally:
                if label is not None:
                    stop_monailabel(label)


def start_monailabel(pacs: Orthanc, workspace: Path, timeout: float = 300) -> subprocess.Popen:
    """MONAI Label on the PACS (its own process group, so that stopping it stops its training runs too); returns once
    its ``/info`` answers."""
    import urllib.request

    port = free_port()
    workspace.mkdir(parents=True, exist_ok=True)
    log = open(workspace / "server.log", "wb")
    process = subprocess.Popen(
        ["bash", str(REPOSITORY / "monailabel" / "start_server.sh"), "--studies", pacs.dicomweb_url, "--port",
         str(port), "--workspace", str(workspace)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=10):
                print(f"MONAI Label: http://127.0.0.1:{port}/ on the PACS (log: {workspace / 'server.log'})")
                return process
        except OSError:
            time.sleep(2)
    stop_monailabel(process)
    raise SystemExit(f"MONAI Label did not start: see {workspace / 'server.log'}")


def stop_monailabel(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _store(pacs: Orthanc, path: Path) -> bool:
    try:
        pacs.upload(path)
        return True
    except OSError as exc:  # not DICOM, or refused: say so and go on
        print(f"  not stored: {path} ({exc})")
        return False


def _seg_series(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


if __name__ == "__main__":
    main()
