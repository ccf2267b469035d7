"""The run fingerprint forgets no option, and a re-run with an option that changes the masks segments again; one batch
run per output folder at a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BUNDLE, read_masks, run_bundle, synthetic_folder

from scripts.batch.batch_run import OUTPUT_NEUTRAL_ARGS, fingerprinted_args
from scripts.batch.fingerprint import OUTPUT_NEUTRAL

BATCH_CONFIGS = ("inference.json", "evaluate.json", "multi_gpu_inference.json")
WORKFLOW = ("imports", "initialize", "run", "finalize")  # steps to run, not options


def _is_component(value) -> bool:
    """What a config declares as a component (a ``_target_`` with arguments, a list of transforms or handlers, Python
    to run), as opposed to an option a user sets (whose default may be computed by a ``default_*`` function:
    ``"num_workers": {"_target_": "scripts.acceleration.default_loader_workers"}``)."""
    if isinstance(value, dict):
        computed_default = list(value) == ["_target_"] and value["_target_"].split(".")[-1].startswith("default_")
        return ("_target_" in value and not computed_default) or any(_is_component(v) for v in value.values())
    if isinstance(value, list):
        return any(isinstance(v, (dict, list)) or (isinstance(v, str) and v.startswith("$")) for v in value)
    return False


def _is_group(value) -> bool:
    """A group of options (``"quality": {"review_below": 0.97, ...}``), set as ``--quality#review_below 0.9``."""
    return isinstance(value, dict) and "_target_" not in value and bool(value) and not _is_component(value)


def batch_options() -> set[str]:
    """Every option of the batch configs, a group's options by their ids (``quality#review_below``)."""
    options = set()
    for name in BATCH_CONFIGS:
        config = json.loads((BUNDLE / "configs" / name).read_text())
        for key, value in config.items():
            key = key.lstrip("+")
            if key in WORKFLOW or _is_component(value) or key.startswith("evaluator#"):
                continue
            options |= {f"{key}#{k}" for k in value} if _is_group(value) else {key}
    return options


def batch_arguments() -> dict[str, str]:
    """``{argument of BatchRun: the option it is given}`` as ``configs/inference.json`` wires them."""
    batch = json.loads((BUNDLE / "configs" / "inference.json").read_text())["batch"]
    return {arg: value[1:] for arg, value in batch.items() if isinstance(value, str) and value.startswith("@")}


def reaching(arguments: set[str]) -> set[str]:
    """The options that reach these arguments of BatchRun: wired to one (a group's options with the group), or set on
    the run itself (``batch#shard``)."""
    options = {option for arg, option in batch_arguments().items() if arg in arguments}
    grouped = {o for o in batch_options() if o.split("#")[0] in options}
    direct = {o for o in batch_options() if o.startswith("batch#") and o.split("#", 1)[1] in arguments}
    return options | grouped | direct


def fingerprinted() -> set[str]:
    """The options that reach an argument of BatchRun in its fingerprint."""
    return reaching(set(fingerprinted_args()))


def test_every_batch_option_is_in_the_fingerprint_or_declared_output_neutral():
    options, used = batch_options(), fingerprinted()
    assert {"crop_padding", "seg_series_number", "mask#threshold", "write_seg", "quality#review_below"} <= used
    neutral_arguments = reaching(set(OUTPUT_NEUTRAL_ARGS))  # e.g. output_dir, batch#shard: the argument says why
    forgotten = sorted(options - used - neutral_arguments - set(OUTPUT_NEUTRAL))
    assert not forgotten, f"options neither in the fingerprint nor declared output-neutral: {forgotten}"
    both = sorted(used & set(OUTPUT_NEUTRAL))
    assert not both, f"declared output-neutral but in the fingerprint: {both}"
    stale = sorted(set(OUTPUT_NEUTRAL) - options)
    assert not stale, f"declared output-neutral but no batch config has them: {stale}"


def test_every_argument_of_the_batch_run_is_wired_and_fingerprinted_or_neutral():
    """BatchRun's fingerprint is every argument but the declared neutral ones: the config gives each a value, and the
    neutral list names no argument that does not exist."""
    import inspect

    from scripts.batch.batch_run import BatchRun

    arguments = [n for n in inspect.signature(BatchRun).parameters if n != "self"]
    assert not sorted(set(OUTPUT_NEUTRAL_ARGS) - set(arguments))
    required = {"writer_postprocessing", "crop_padding", "seg_series_number", "write_seg", "overwrite"}
    assert required <= set(json.loads((BUNDLE / "configs" / "inference.json").read_text())["batch"])
    assert {"crop_padding", "threshold", "write_seg", "ckpt_path", "quality"} <= set(fingerprinted_args())


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
