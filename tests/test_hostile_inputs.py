"""Batch inference survives any file: a fuzz suite of hostile inputs run through the real inference workflow.

The property, checked on real ``monai.bundle run`` inference over folders of hostile files (Hypothesis draws them,
see ``hostile_strategies.py``; seeded generators in ``hostile_files.py`` build the fixed folder of the command-line
test): exactly one report row per file, status ok/skipped/failed, a non-empty reason on every row that is not ok, exit
status 0 or 3, nothing written outside ``--output_dir`` (and no output that no row lists), and the good files among
them give the same masks as a run without the hostile ones.

Profiles (``--hypothesis-profile``, registered in ``conftest.py``): ``ci`` (default, a few minutes on 2 cores) and
``long`` (thousands of examples, for a local run; see the bundle card).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import hostile_files as hostile
import numpy as np
import pytest
from conftest import BUNDLE, run, run_bundle
from hostile_strategies import hostile_files, materialise
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scripts.batch.fault_tolerance import ERROR_KEY, STATUS_KEY, GuardedDataset
from scripts.batch.report import EXIT_INPUTS_FAILED, EXIT_OK
from scripts.batch.report_files import REPORT_FILES
from scripts.io.discovery import classify_file

pytestmark = pytest.mark.slow

IMAGE_SIZE = 96
# the same masks whatever else is in the batch: fp32 (bf16 kernels may round differently for other batch shapes)
RUN_OPTIONS = {
    "image_size": [IMAGE_SIZE, IMAGE_SIZE],
    "num_workers": 0,
    "batch_size": 4,
    "overlay_size": 128,
    "precision": "fp32",
}
# a whole inference run per example: a twentieth of the profile's examples (ci: 10, long: 250)
WHOLE_RUNS = settings(
    max_examples=max(3, settings().max_examples // 20),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def run_in_process(src: Path, out: Path, model: Path, **options) -> int:
    """``monai.bundle run`` of ``configs/inference.json`` in this process (as the command line does, without its
    start-up cost); returns the exit status the command line would have."""
    from monai.bundle import run

    arguments = {**RUN_OPTIONS, **options}
    try:
        run(
            config_file=str(BUNDLE / "configs" / "inference.json"),
            meta_file=str(BUNDLE / "configs" / "metadata.json"),
            logging_file=False,
            bundle_root=str(BUNDLE),
            dataset_dir=str(src),
            output_dir=str(out),
            ckpt_path=str(model),
            **arguments,
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return EXIT_OK


def snapshot(folder: Path, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (but ``exclude``) with its size and modification time."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and (exclude is None or exclude not in path.parents) and "__pycache__" not in path.parts:
            stat = path.stat()
            found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found


def read_rows(out: Path) -> list[dict]:
    with open(out / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_accounted_for(src: Path, out: Path, status: int) -> dict[str, dict]:
    """The property's report half: one row per file, statuses and reasons, exit status, no stray outputs."""
    assert status in (EXIT_OK, EXIT_INPUTS_FAILED), status
    rows = read_rows(out)
    inputs = sorted(str(p.relative_to(src)) for p in src.rglob("*") if not p.is_dir() and not p.name.startswith("."))
    assert sorted(r["input"] for r in rows) == inputs  # exactly one row per file
    for row in rows:
        assert row["status"] in ("ok", "skipped", "failed"), row
        assert row["status"] == "ok" or row["reason"].strip(), row
        assert "Traceback" not in row["reason"] and "\n" not in row["reason"], row
    assert status == (EXIT_INPUTS_FAILED if any(r["status"] == "failed" for r in rows) else EXIT_OK)
    listed = {r[c] for r in rows for c in ("mask_png", "mask_nifti", "seg_dicom", "overlay") if r[c]}
    for path in out.rglob("*"):
        relative = str(path.relative_to(out))
        if path.is_file() and relative not in REPORT_FILES and not relative.startswith("records/"):
            assert relative in listed, f"{relative}: written, but no report row lists it"
        assert not path.name.startswith(".tmp-"), f"{relative}: a temporary file was left behind"
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["files_found"] == len(rows) and summary["exit_status"] == status
    return {r["input"]: r for r in rows}


def masks_by_input(out: Path, rows: dict[str, dict], prefix: str = "") -> dict[str, np.ndarray]:
    return {
        name[len(prefix) :]: np.asarray(Image.open(out / row["mask_png"])) > 0
        for name, row in rows.items()
        if name.startswith(prefix) and row["status"] == "ok"
    }


@pytest.fixture(scope="module")
def model(trained_model) -> Path:
    return trained_model["weights"]


@pytest.fixture(scope="module")
def good_run(model, tmp_path_factory) -> dict[str, np.ndarray]:
    """The good files alone, segmented once: the masks every hostile folder must leave unchanged."""
    root = tmp_path_factory.mktemp("good_only")
    hostile.write_good_files(root / "in" / "good")
    status = run_in_process(root / "in", root / "out", model)
    rows = check_accounted_for(root / "in", root / "out", status)
    assert status == EXIT_OK and all(r["status"] == "ok" for r in rows.values())
    return {"root": root, "masks": masks_by_input(root / "out", rows, "good/")}


@pytest.fixture(scope="module")
def preprocessing():
    """``configs/inference.json``'s reading and pre-processing, as the batch run builds them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["model_settings"] = {
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "crop_padding": True,
        "intensity": "histogram",
        "num_classes": 2,
    }
    return parser.get_parsed_content("preprocessing")


@given(recipe=hostile_files())
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_single_file_is_classified_and_loaded_or_refused_with_a_reason(recipe, preprocessing):
    """Per file, fast: discovery never raises, and loading either gives the network's input or a reason."""
    extension, data = materialise(recipe)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "input" + extension)
        with open(path, "wb") as f:
            f.write(data)
        entry = classify_file(path, "input" + extension)
        assert entry["status"] in ("pending", "skipped", "failed")
        assert entry["status"] == "pending" or entry["reason"], entry
        if entry["status"] != "pending":
            return
        item = GuardedDataset([{"image": path, "case_key": "k"}], preprocessing)[0]
        if ERROR_KEY in item:
            assert item[STATUS_KEY] in ("failed", "skipped") and item[ERROR_KEY].strip(), item
            assert "\n" not in item[ERROR_KEY]
        else:
            image = item["image"]
            assert tuple(image.shape) == (1, IMAGE_SIZE, IMAGE_SIZE)
            assert bool(np.isfinite(np.asarray(image)).all())


@given(recipes=st.lists(hostile_files(), min_size=1, max_size=10))
@WHOLE_RUNS
def test_a_folder_of_hostile_files_is_accounted_for_file_by_file(recipes, model, good_run):
    """The whole property on a real inference run over the good files plus drawn hostile files."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        src, out = root / "in", root / "out"
        hostile.write_good_files(src / "good")
        for index, recipe in enumerate(recipes):
            extension, data = materialise(recipe)
            (src / "hostile").mkdir(parents=True, exist_ok=True)
            (src / "hostile" / f"file_{index:02d}{extension}").write_bytes(data)
        before_inputs, before_bundle = snapshot(src), snapshot(BUNDLE)
        status = run_in_process(src, out, model)
        rows = check_accounted_for(src, out, status)
        assert snapshot(src) == before_inputs, "an input was changed"
        assert snapshot(BUNDLE) == before_bundle, "something was written into the bundle folder"
        assert sorted(p.name for p in root.iterdir()) == ["in", "out"], "something was written beside the output"
        masks = masks_by_input(out, rows, "good/")
        assert masks.keys() == good_run["masks"].keys()
        for name, mask in masks.items():
            assert np.array_equal(mask, good_run["masks"][name]), f"{name}: the mask changed beside hostile files"


def write_issue_folder(src: Path) -> None:
    """A folder like the one of the issue: good radiographs, hand-made hostile tag values, image bombs, 80 seeded
    random mutations of valid CR/DX files, and PNG/JPEG/NIfTI oddities."""
    good = hostile.write_good_files(src / "good")
    hostile.write_hostile_tags(src / "tags")
    hostile.write_bombs(src / "bombs")
    hostile.write_mutations(src / "mutations", [p for p in good if p.suffix == ".dcm"], count=80, seed=14)
    hostile.write_odd_images(src / "odd")
    os.mkfifo(src / "odd" / "named_pipe")  # reading it would never end
    (src / "odd" / "broken_link.dcm").symlink_to(src / "odd" / "nowhere.dcm")


def test_the_issue_folder_goes_through_from_the_command_line(model, good_run, tmp_path):
    """As a user runs it: ``python -m monai.bundle run`` over a folder of about 160 hostile files ends with exit
    status 3, a report that accounts for every file, and unchanged masks for the good ones."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_issue_folder(src)
    before = snapshot(tmp_path)
    proc = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(src), "--output_dir", str(out),
        "--ckpt_path", str(model), *(f"--{k}" if i == 0 else str(v) for k, v in RUN_OPTIONS.items() for i in (0, 1)),
        expect=EXIT_INPUTS_FAILED,
    )  # fmt: skip
    rows = check_accounted_for(src, out, proc.returncode)
    assert proc.returncode == EXIT_INPUTS_FAILED, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out/")} == before
    masks = masks_by_input(out, rows, "good/")
    assert masks.keys() == good_run["masks"].keys()
    assert all(np.array_equal(mask, good_run["masks"][name]) for name, mask in masks.items())
    # the findings of the issue, by name
    expected = {
        "tags/vr_unknown.dcm": ("ok", ""),  # pydicom raised NotImplementedError late; the file meta names the class
        "tags/spacing_text.dcm": ("ok", ""),
        "tags/slope_nan.dcm": ("ok", ""),
        "tags/window_nan.dcm": ("ok", ""),
        "bombs/claims_60000.png": ("failed", "above the limit of 36.0 megapixels"),
        "bombs/zeros_20000.png": ("failed", "above the limit of 36.0 megapixels"),
        "bombs/claims_8gb.dcm": ("failed", "above the limit of 36.0 megapixels"),
        "bombs/j2k_claims_60000.dcm": ("failed", "codestream is 60000 x 60000 pixels"),
        "bombs/deflate_bomb.dcm": ("failed", "the deflated dataset expands to more than 201 MiB"),
        "odd/constant_black.png": ("skipped", "blank image"),
        "odd/nan_2d.nii.gz": ("failed", "no finite pixel value"),
        "odd/named_pipe": ("skipped", "not a regular file (named pipe)"),
        "odd/broken_link.dcm": ("failed", "broken symbolic link"),
    }
    for name, (status, reason) in expected.items():
        assert rows[name]["status"] == status and reason in rows[name]["reason"], rows[name]
    assert rows["tags/spacing_text.dcm"]["spacing_source"] == "none: PixelSpacing 'abc' is not a number"
    assert not rows["tags/spacing_text.dcm"]["lung_area_cm2"] and rows["tags/spacing_text.dcm"]["lung_area_px"]
    magnified = rows["tags/magnification_valid.dcm"]
    assert magnified["pixel_spacing_mm"] == "0.16\\0.16" and "(patient plane)" in magnified["spacing_source"]
    assert "rescale slope nan intercept 0 ignored" in rows["tags/slope_nan.dcm"]["pixel_processing"]
    assert "window nan/nan ignored" in rows["tags/window_nan.dcm"]["pixel_processing"]


def peak_rss_mb(*args: str) -> tuple[float, object]:
    """Run ``monai.bundle`` with ``args`` in a child process; return the peak resident memory of its process tree
    (the largest of the main process and its DataLoader workers) in MiB, and the process."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run([sys.executable, '-m', 'monai.bundle', *sys.argv[1:]])\n"
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(proc.returncode)\n"
    )
    proc = run([sys.executable, "-c", wrapper, *args], expect=None)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PEAK_RSS_KB"))
    return int(line.split()[1]) / 1024, proc


def test_bombs_fail_fast_and_memory_does_not_follow_what_a_header_claims(model, good_run, tmp_path):
    """Decompression bombs (a PNG header claiming 60000 x 60000, a real 20000 x 20000 PNG of zeros, a DICOM whose
    Rows x Columns claim 8 GB, JPEG 2000 codestreams claiming 60000 x 60000, a deflated DICOM that inflates to 300 MB,
    a NIfTI header claiming 32000 x 32000) fail with a reason, and the run's peak memory stays that of the same run
    without them."""
    common = ["run", "--config_file", "configs/inference.json", "--ckpt_path", str(model), "--num_workers", "2"]
    good = good_run["root"] / "in"
    baseline, _ = peak_rss_mb(*common, "--dataset_dir", str(good), "--output_dir", str(tmp_path / "out_good"))
    src = tmp_path / "in"
    hostile.write_good_files(src / "good")
    bombs = hostile.write_bombs(src / "bombs")
    hostile.write_odd_images(src / "odd")
    with_bombs, proc = peak_rss_mb(*common, "--dataset_dir", str(src), "--output_dir", str(tmp_path / "out"))
    rows = check_accounted_for(src, tmp_path / "out", proc.returncode)
    for path in bombs + [src / "odd" / "claims_huge.nii", src / "odd" / "header_only.nii"]:
        row = rows[str(path.relative_to(src))]
        reason = row["reason"]
        assert row["status"] == "failed" and any(
            w in reason for w in ("above the limit", "codestream", "expands to")
        ), row
    # before the limits, the JPEG 2000 and NIfTI claims each allocated about 4 GB; 300 MiB is the noise allowed
    assert with_bombs < baseline + 300, f"peak {with_bombs:.0f} MiB with the bombs, {baseline:.0f} MiB without"


def test_max_image_pixels_sets_the_largest_image_read(model, good_run, tmp_path):
    """``--inputs#max_image_pixels`` as a user types it: a limit below the good images' size refuses them all with the
    reason, the default reads them."""
    src = good_run["root"] / "in"
    status = run_in_process(src, tmp_path / "small", model, **{"inputs#max_image_pixels": 1000})
    rows = check_accounted_for(src, tmp_path / "small", status)
    assert status == EXIT_INPUTS_FAILED
    assert all("above the limit of 0.0 megapixels" in r["reason"] for r in rows.values()), rows


def run_cli(*args: str, max_file_size: int | None = None):
    return run_bundle("run", "--config_file", "configs/inference.json", *args, expect=None, max_file_size=max_file_size)


def test_faults_of_the_run_stop_it_with_a_message_and_nothing_half_written(model, good_run, tmp_path):
    """Only faults of the run itself stop it, with exit status 1 and a message that says what to do: an output
    folder that cannot be created, missing weights, weights that do not fit the network, and files that cannot be
    written (a file-size limit fails writes as a full disk does)."""
    import torch

    src = str(good_run["root"] / "in")
    (tmp_path / "a_file").write_text("not a folder")
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other_network.pt")
    cases = {
        "cannot be written (Not a directory)": [
            "--output_dir",
            str(tmp_path / "a_file" / "out"),
            "--ckpt_path",
            str(model),
        ],
        "no weights at": ["--output_dir", str(tmp_path / "o1"), "--ckpt_path", str(tmp_path / "missing.pt")],
        "cannot be loaded into the network": [
            "--output_dir",
            str(tmp_path / "o2"),
            "--ckpt_path",
            str(tmp_path / "other_network.pt"),
        ],
    }
    for message, args in cases.items():
        proc = run_cli("--dataset_dir", src, "--num_workers", "0", *args)
        assert proc.returncode == 1 and "Run stopped: " in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = tmp_path / "full"
    proc = run_cli(
        "--dataset_dir",
        src,
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(model),
        "--num_workers",
        "0",
        max_file_size=20_000,
    )
    assert proc.returncode == 1 and "Run stopped: cannot write in" in proc.stderr and "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # what a case had written when the fault came is removed; rows recorded before it are complete
    leftovers = [p for p in out.rglob("*") if p.is_file() and "records" not in p.parts]
    recorded = [json.loads(line) for p in (out / "records").glob("*.jsonl") for line in p.read_text().splitlines()]
    listed = {r[c] for r in recorded for c in ("mask_png", "mask_nifti", "seg_dicom", "overlay") if r.get(c)}
    assert {str(p.relative_to(out)) for p in leftovers} == listed
