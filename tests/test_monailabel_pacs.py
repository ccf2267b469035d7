"""MONAI Label on a PACS: a real MONAI Label 0.8.5 server started by ``monailabel/start_server.sh --studies
http://127.0.0.1:PORT/dicom-web`` on a real Orthanc, driven over HTTP as a client would.

The PACS holds three DX and one CR radiograph, an automatic SEG from the bundle's batch inference (not a label) and a
label SEG saved earlier through MONAI Label (``monailabel/pacs_app``). The server must list the four radiographs,
segment one as batch inference does, store a saved label in the PACS as a DICOM SEG that reads back to the same mask,
and train from the PACS's labels. Skips without the MONAI Label environment or Orthanc.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import dicom_factory as make
import numpy as np
import pydicom
import pytest
from conftest import REPO, dice, run_bundle
from PIL import Image
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid
from test_monailabel import (
    MODEL,
    _bundle_copy,
    _corrected_label,
    _sha256,
    _start_server,
    _stop_server,
    _synthetic,
    needs_monailabel,
)

sys.path.insert(0, str(REPO))
from pacs.stack import Orthanc  # noqa: E402

pytestmark = [pytest.mark.slow, needs_monailabel]
LABEL_DESCRIPTION = "Lung label (MONAI Label)"  # monailabel/pacs_app/radiograph_dicomweb.py's


@pytest.fixture(scope="module")
def radiographs(pacs, tmp_path_factory) -> dict:
    """Four radiographs in the PACS (``dx0``-``dx2``, ``cr``), each its own series; the bundle's automatic SEG of
    ``dx0``; a label SEG of ``dx1`` stored as MONAI Label stores one."""
    from scripts.batch.writers import write_dicom_seg

    folder = tmp_path_factory.mktemp("pacs_files")
    cases = {}
    for name, seed in (("dx0", 401), ("dx1", 402), ("dx2", 403), ("cr", 404)):
        image, mask = _synthetic(seed)
        extra = {"modality": "CR", "sop_class": ComputedRadiographyImageStorage} if name == "cr" else {}
        dataset = make.radiograph(image, pixel_spacing=(0.2, 0.2), patient_orientation=("L", "F"), **extra)
        path = make.save(dataset, folder / f"{name}.dcm")
        pacs.upload(path)
        cases[name] = {"path": path, "series": str(dataset.SeriesInstanceUID), "truth": (mask > 0).astype(np.uint8)}
    automatic, _ = write_dicom_seg(
        str(folder / "dx0_seg.dcm"), pydicom.dcmread(cases["dx0"]["path"]), cases["dx0"]["truth"]
    )
    label, _ = write_dicom_seg(
        str(folder / "dx1_label.dcm"),
        pydicom.dcmread(cases["dx1"]["path"]),
        cases["dx1"]["truth"],
        uid_seed=generate_uid(),
        algorithm_type="SEMIAUTOMATIC",
        series_description=LABEL_DESCRIPTION,
    )
    for seg in (automatic, label):
        pacs.upload(Path(seg))
    return cases


@pytest.fixture(scope="module")
def server(tmp_path_factory, pacs, radiographs, trained_model):
    workspace = tmp_path_factory.mktemp("monailabel_pacs_workspace")
    models = workspace / "monaibundle-pacs" / "model"
    _bundle_copy(models / MODEL, trained_model["weights"])
    server = _start_server(workspace, pacs.dicomweb_url, workspace / "server.log", models=(MODEL,))
    server.models = models
    try:
        yield server
    finally:
        _stop_server(server)


def _seg_series(pacs: Orthanc, image_series: str) -> list[pydicom.Dataset]:
    """The label SEGs in the PACS that reference ``image_series``, retrieved whole."""
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(pacs.dicomweb_url)
    found = []
    for item in client.search_for_series(search_filters={"Modality": "SEG"}):
        series = pydicom.Dataset.from_json(item)
        if series.get("SeriesDescription") != LABEL_DESCRIPTION:
            continue
        for seg in client.retrieve_series(str(series.StudyInstanceUID), str(series.SeriesInstanceUID)):
            if str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == image_series:
                found.append(seg)
    return found


def test_the_server_lists_the_radiographs_and_only_the_label_segs_as_labels(server, radiographs):
    info = server.json("GET", "/info/")
    assert MODEL in info["models"], info["models"].keys()
    assert info["datastore"]["total"] == 4, info["datastore"]  # DX and CR; the SEGs are not images
    assert info["datastore"]["completed"] == 1, info["datastore"]  # dx1's label, not dx0's automatic SEG
    # active learning hands out an unlabelled radiograph
    sample = server.json("POST", "/activelearning/random", {})
    assert sample["id"] in {radiographs[name]["series"] for name in ("dx0", "dx2", "cr")}, sample


def test_infer_on_a_pacs_radiograph_gives_the_batch_inference_mask(server, radiographs, trained_model, tmp_path):
    case = radiographs["dx2"]
    result = server.infer(MODEL, case["series"], tmp_path)
    with Image.open(result) as image:
        assert image.format == "PNG"
        mask = np.asarray(image)
    assert mask.shape == case["truth"].shape, (mask.shape, case["truth"].shape)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(case["path"], inputs)
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(trained_model["weights"]),
        "--write_seg",
        "false",
        "--write_overlay",
        "false",
        "--num_workers",
        "0",
        "--precision",
        "fp32",  # MONAI Label runs the network in fp32
    )
    (batch,) = (tmp_path / "out").glob("*_mask.png")
    np.testing.assert_array_equal(mask > 0, np.asarray(Image.open(batch)) > 0)
    assert dice(mask, case["truth"]) > 0.8, dice(mask, case["truth"])


def test_a_saved_label_is_a_seg_in_the_pacs_and_training_reads_the_pacs_labels(server, pacs, radiographs, tmp_path):
    case = radiographs["dx2"]
    corrected = _corrected_label(case["truth"])
    label = tmp_path / "label.png"
    Image.fromarray(corrected).save(label)
    query = urllib.parse.urlencode({"image": case["series"], "tag": "final"})
    _, content = server.multipart("PUT", f"/datastore/label?{query}", {"params": "{}"}, {"label": label})
    assert json.loads(content)["label"] == case["series"]

    # the PACS has the label as a SEG of that radiograph, with the corrected mask's pixels
    (seg,) = _seg_series(pacs, case["series"])
    source = pydicom.dcmread(case["path"], stop_before_pixels=True)
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    )
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    np.testing.assert_array_equal(np.asarray(seg.pixel_array).reshape(corrected.shape), corrected)
    if shutil.which("dciodvfy"):
        seg_file = tmp_path / "seg.dcm"
        seg.save_as(seg_file, enforce_file_format=True)
        check = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors

    # training takes both labels from the PACS (dx1's was there before the server started), not the automatic SEG
    weights = server.models / MODEL / "models" / "model.pt"
    before = _sha256(weights)
    task = server.train(MODEL, {"max_epochs": 1, "val_split": 0.0})
    assert task["status"] == "DONE", f"{task}\n{server.log_tail()}"
    assert _sha256(weights) != before, "training did not write models/model.pt"
    cache = next((server.models.parent.parent / "dicomweb-cache").glob("*/labels/final"))
    labels = {path.stem: np.asarray(Image.open(path)) for path in cache.glob("*.png")}
    assert set(labels) == {radiographs["dx1"]["series"], case["series"]}, set(labels)
    np.testing.assert_array_equal(labels[radiographs["dx1"]["series"]], radiographs["dx1"]["truth"])
    np.testing.assert_array_equal(labels[case["series"]], corrected)
    assert "train" in server.log_tail(200000).lower()
