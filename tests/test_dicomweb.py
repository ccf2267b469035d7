"""Batch inference from and to a PACS: a real Orthanc on loopback as the DICOMweb server, the bundle run with
``--dicomweb#url`` as a user types it, its SEGs stored back, a re-run that skips what is done, a study filter, and a
server that cannot be reached."""

from __future__ import annotations

import csv
import json
import sys
import urllib.request
from pathlib import Path

import dicom_factory as make
import numpy as np
import pydicom
import pytest
from conftest import REPO, run, run_bundle
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from scripts.data.synthetic import synthetic_case

sys.path.insert(0, str(REPO))
from pacs.stack import Orthanc, free_port, missing  # noqa: E402

pytestmark = pytest.mark.slow
SECRET = "not-in-any-log-7f3a"


def qido(pacs: Orthanc, query: str) -> list[pydicom.Dataset]:
    with urllib.request.urlopen(f"{pacs.dicomweb_url}/{query}", timeout=30) as answer:
        body = answer.read()
    return [pydicom.Dataset.from_json(item) for item in json.loads(body or b"[]")]


def read_rows(out: Path) -> dict[str, dict]:
    with open(out / "report.csv") as f:
        return {row["input"]: row for row in csv.DictReader(f)}


def store_studies(pacs: Orthanc, folder: Path) -> dict:
    """Two studies in the PACS: three DX radiographs and a structured report in one, a CR in the other."""
    study_a, study_b = generate_uid(), generate_uid()
    datasets = [make.radiograph(synthetic_case(seed)[0], study_uid=study_a) for seed in range(3)]
    datasets.append(
        make.radiograph(
            synthetic_case(7)[0], study_uid=study_b, modality="CR", sop_class=ComputedRadiographyImageStorage
        )
    )
    datasets.append(make.structured_report(study_uid=study_a))
    for index, dataset in enumerate(datasets):
        pacs.upload(make.save(dataset, folder / f"{index}.dcm"))
    return {"a": study_a, "b": study_b, "datasets": datasets}


def test_pacs_run_stores_segs_and_a_rerun_skips_them(pacs, tmp_path, model_args):
    studies = store_studies(pacs, tmp_path)
    images = [d for d in studies["datasets"] if d.Modality in ("DX", "CR")]
    environment = {"DICOMWEB_USERNAME": "reader", "DICOMWEB_PASSWORD": SECRET}
    out = tmp_path / "out"
    args = ["run", "--config_file", "configs/inference.json", "--dicomweb#url", pacs.dicomweb_url]
    first = run_bundle(*args, "--output_dir", str(out), *model_args, env=environment)
    rows = read_rows(out)
    assert len(rows) == 5  # every instance of both studies has its row
    for dataset in images:
        row = rows[f"{dataset.StudyInstanceUID}/{dataset.SeriesInstanceUID}/{dataset.SOPInstanceUID}.dcm"]
        assert row["status"] == "ok" and row["sop_instance_uid"] == dataset.SOPInstanceUID, row
        assert row["seg_sop_instance_uid"]
    report_row = next(r for r in rows.values() if r["kind"] == "dicom" and r["status"] == "skipped")
    assert report_row["reason"] == "modality SR"
    # each SEG is in the PACS, in its source's study, referencing its source instance
    stored = {str(s.SOPInstanceUID) for study in ("a", "b") for s in qido(pacs, f"studies/{studies[study]}/instances")}
    expected = {r["seg_sop_instance_uid"] for r in rows.values() if r["status"] == "ok"}
    assert expected <= stored
    for dataset in images:
        seg_uid = rows[f"{dataset.StudyInstanceUID}/{dataset.SeriesInstanceUID}/{dataset.SOPInstanceUID}.dcm"][
            "seg_sop_instance_uid"
        ]
        segs = qido(pacs, f"studies/{dataset.StudyInstanceUID}/instances?SOPInstanceUID={seg_uid}")
        assert len(segs) == 1 and segs[0].Modality == "SEG"
    text = first.stdout + first.stderr + (out / "report.json").read_text()
    assert SECRET not in text  # credentials come from the environment and go nowhere else

    # the same command into another folder finds every SEG in the PACS already and segments nothing (the SEGs are
    # instances of the studies now, listed too)
    again = tmp_path / "again"
    run_bundle(*args, "--output_dir", str(again), *model_args)
    reasons = sorted(r["reason"] for r in read_rows(again).values() if r["status"] == "skipped")
    assert reasons == ["its SEG with these settings is in the PACS already"] * 4 + ["modality SEG"] * 4 + [
        "modality SR"
    ]
    # other settings make another SEG; a study filter keeps to that study
    only_b = tmp_path / "only_b"
    run_bundle(*args, "--output_dir", str(only_b), "--dicomweb#studies", studies["b"], "--mask#keep_components", "1",
               *model_args)  # fmt: skip
    rows = read_rows(only_b)
    assert sorted(r["status"] for r in rows.values()) == ["ok", "skipped"]
    assert all(name.startswith(studies["b"]) for name in rows)
    assert len(qido(pacs, f"studies/{studies['b']}/instances?Modality=SEG")) == 2
    # a study the PACS does not have is a clear error, not an empty report
    proc = run_bundle(*args, "--output_dir", str(tmp_path / "none"), "--dicomweb#studies", "1.2.3.4.5", *model_args,
                      expect=1)  # fmt: skip
    assert "no instances found in studies 1.2.3.4.5" in proc.stdout + proc.stderr


def test_pacs_that_cannot_be_reached_stops_the_run_with_its_address(tmp_path, model_args):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    proc = run_bundle("run", "--config_file", "configs/inference.json", "--dicomweb#url", url,
                      "--output_dir", str(tmp_path / "out"), *model_args, expect=1)  # fmt: skip
    assert f"the DICOMweb server {url} cannot be searched" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_folder_and_a_pacs_together_are_refused(tmp_path, model_args):
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    from PIL import Image

    Image.fromarray(np.asarray(synthetic_case(0)[0])).save(image)
    proc = run_bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(image.parent),
                      "--dicomweb#url", "http://127.0.0.1:1/dicom-web", "--output_dir", str(tmp_path / "out"),
                      *model_args, expect=None)  # fmt: skip
    assert proc.returncode != 0 and "give one source" in proc.stdout + proc.stderr


def test_demo_script_brings_the_stack_up_and_shows_a_seg_in_ohif(tmp_path, trained_model):
    """``pacs/demo.py`` as the card gives it: Orthanc, OHIF and a PACS-sourced run, then what the viewer shows."""
    absent = missing()
    if absent:
        pytest.skip("needs " + "; ".join(absent))
    from PIL import Image

    shot = tmp_path / "ohif.png"
    weights = str(trained_model["weights"])
    proc = run([sys.executable, str(REPO / "pacs" / "demo.py"), "--ckpt_path", weights,
                "--workdir", str(tmp_path / "demo"), "--screenshot", str(shot)], cwd=REPO)  # fmt: skip
    assert "segmented: 6 ok, 0 skipped, 0 failed" in proc.stdout
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (pixels[..., 0] - pixels[..., 1:].max(axis=-1)) > 60  # OHIF's first segment colour over the grey image
    assert red.sum() > 2000, "no segmentation drawn in the viewer"
