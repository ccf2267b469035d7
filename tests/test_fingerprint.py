"""The run fingerprint forgets no option, and a re-run with an option that changes the masks segments again; one batch
run per output folder at a time."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import BUNDLE, read_masks, run_bundle, synthetic_folder

from scripts.batch.fingerprint import OUTPUT_NEUTRAL

BATCH_CONFIGS = ("inference.json", "evaluate.json", "multi_gpu_inference.json")


def _is_component(value) -> bool:
    """What a config declares as a component (a ``_target_``, a list of transforms or handlers, Python to run), as
    opposed to an option a user sets."""
    if isinstance(value, dict):
        return "_target_" in value or any(_is_component(v) for v in value.values())
    if isinstance(value, list):
        return any(isinstance(v, (dict, list)) or (isinstance(v, str) and v.startswith("$")) for v in value)
    return False


def batch_options() -> set[str]:
    options = set()
    for name in BATCH_CONFIGS:
        config = json.loads((BUNDLE / "configs" / name).read_text())
        workflow = ("settings", "imports", "initialize", "run", "finalize")  # the fingerprint itself; steps to run
        options |= {k.lstrip("+") for k, v in config.items() if k not in workflow and not _is_component(v)}
    return options


def fingerprinted() -> set[str]:
    """The options the fingerprint (``settings`` of inference.json) is made from."""
    settings = json.dumps(json.loads((BUNDLE / "configs" / "inference.json").read_text())["settings"])
    return set(re.findall(r"@([A-Za-z_][\w#]*)", settings))


def test_every_batch_option_is_in_the_fingerprint_or_declared_output_neutral():
    options, used = batch_options(), fingerprinted()
    assert {"crop_padding", "seg_series_number", "threshold", "write_seg"} <= used
    forgotten = sorted(options - used - set(OUTPUT_NEUTRAL))
    assert not forgotten, f"options neither in the fingerprint nor declared output-neutral: {forgotten}"
    both = sorted(used & set(OUTPUT_NEUTRAL))
    assert not both, f"declared output-neutral but in the fingerprint: {both}"
    stale = sorted(set(OUTPUT_NEUTRAL) - options)
    assert not stale, f"declared output-neutral but no batch config has them: {stale}"


@pytest.mark.slow
def test_a_rerun_with_another_padding_crop_segments_again(model_args, tmp_path):
    src = synthetic_folder(tmp_path / "in", files=3, dicom_every=99)
    out = tmp_path / "out"
    args = ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(src), "--output_dir", str(out)]
    run_bundle(*args, *model_args)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")}
    run_bundle(*args, *model_args)  # the same settings: every row reused, nothing written again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")} == first
    run_bundle(*args, *model_args, "--crop_padding", "false")
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["crop_padding"] is False
    assert all(not row["reused"] for row in report["rows"]), report["rows"]
    assert all(p.stat().st_mtime_ns != first[p.name] for p in out.glob("*_mask.png"))
    assert len(read_masks(out)) == 3


@pytest.mark.slow
def test_a_second_run_into_a_busy_output_folder_stops_and_names_the_first(model_args, tmp_path):
    """A run into a folder another process is writing to stops with exit status 1 and names that process; the folder
    is free again as soon as that process ends, however it ends (here: killed)."""
    src = synthetic_folder(tmp_path / "in", files=2, dicom_every=99)
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    holder = subprocess.Popen(  # holds the folder as a batch run does (scripts.batch.run_start.open_run)
        [sys.executable, "-c", HOLD_FOLDER, str(out)], cwd=BUNDLE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        args = ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(src), "--output_dir", str(out)]
        second = run_bundle(*args, *model_args, expect=1)
        message = second.stdout + second.stderr
        assert "is in use by another batch run" in message and f'"pid": {holder.pid}' in message, message[-3000:]
        assert "Traceback" not in message and not (out / "report.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    run_bundle(*args, *model_args)
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 2 and all(row["status"] == "ok" for row in report["rows"])


HOLD_FOLDER = """
import sys, time
from scripts.batch.folder_lock import claim_output_folder
claim_output_folder(sys.argv[1])
print("holding", flush=True)
time.sleep(600)
"""
