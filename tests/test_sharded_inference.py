"""Batch inference sharded over processes with a real ``torchrun`` (CPU, gloo) and configs/multi_gpu_inference.json:
the merged report equals a single process's, a killed rank loses nothing, and two "nodes" share one output folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLE, run, run_bundle, synthetic_folder
from PIL import Image

from scripts.batch.records import read_records
from scripts.batch.report import EXIT_INPUTS_FAILED
from scripts.batch.report_files import REPORT_FILES

SHARDED_CONFIGS = "['configs/inference.json','configs/multi_gpu_inference.json']"
OUTPUT_COLUMNS = ("mask_png", "mask_nifti", "seg_dicom", "overlay")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder as users have them: PNGs and DICOMs (sub-folders), a blank image (skipped) and a broken file
    (failed), so the merged report must carry every kind of row."""
    src = synthetic_folder(tmp_path_factory.mktemp("sharded") / "in", files=20, dicom_every=5)
    Image.fromarray(np.zeros((200, 180), np.uint8)).save(src / "blank.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    return src


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *args]


def inference_args(src: Path, out: Path, model_args: list[str]) -> list[str]:
    return [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        SHARDED_CONFIGS,
        "--dataset_dir",
        str(src),
        "--output_dir",
        str(out),
        *model_args,
        "--write_processes",
        "0",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report_rows(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["rows"]


def assert_same_run(single: Path, sharded: Path) -> None:
    """Same report (apart from start/finish times and the output folder) and byte-identical masks."""
    assert (single / "report.csv").read_text() == (sharded / "report.csv").read_text()
    one, other = (json.loads((o / "report.json").read_text()) for o in (single, sharded))
    assert one["rows"] == other["rows"] and one["summary"] == other["summary"] and one["settings"] == other["settings"]
    masks = [r["mask_png"] for r in one["rows"] if r["mask_png"]]
    assert len(masks) == 20
    assert all((single / m).read_bytes() == (sharded / m).read_bytes() for m in masks)


@pytest.fixture(scope="module")
def single_run(folder, model_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(folder),
        "--output_dir",
        str(out),
        *model_args,
        expect=EXIT_INPUTS_FAILED,
    )
    return out


def test_two_ranks_merge_into_the_single_process_report(folder, model_args, single_run, tmp_path):
    out = tmp_path / "out"
    run(torchrun("--standalone", *inference_args(folder, out, model_args)), expect=1)  # a rank exiting 3 -> 1
    assert_same_run(single_run, out)
    rows = report_rows(out)
    statuses = {r["input"]: r["status"] for r in rows}
    assert statuses["blank.png"] == "skipped" and statuses["broken.png"] == "failed"
    # each rank segmented its own half and recorded it in its own file
    per_rank = [[json.loads(line)["_key"] for line in (out / "records" / f"rank-{r}.jsonl").open()] for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1 and len(per_rank[0]) + len(per_rank[1]) == 22


def test_two_local_nodes_share_one_output_folder(folder, model_args, single_run, tmp_path):
    out, port = tmp_path / "out", free_port()
    nodes = [
        subprocess.Popen(
            torchrun(
                "--nnodes=2",
                f"--node_rank={rank}",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                *inference_args(folder, out, model_args),
                nproc=1,
            ),
            cwd=BUNDLE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [1, 1], logs[0][-3000:] + logs[1][-3000:]  # 3 in each worker
    assert "rank 1 of 2 joined" in "".join(logs)
    assert_same_run(single_run, out)


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def test_killed_rank_loses_nothing_and_the_rerun_finishes(folder, model_args, tmp_path):
    out = tmp_path / "out"
    command = torchrun("--standalone", *inference_args(folder, out, model_args), "--batch_size", "1")
    launcher = subprocess.Popen(command, cwd=BUNDLE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rank1_records = out / "records" / "rank-1.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and launcher.poll() is None:
        if rank1_records.is_file() and rank1_records.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    victims = [pid for pid in child_pids(launcher.pid) if rank_of(pid) == 1]
    assert len(victims) == 1, "rank 1 was not found running"
    os.kill(victims[0], signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0
    first = read_records(str(out / "records"))
    assert 2 <= len(first) < 22 and not (out / "report.csv").exists(), "the run was not interrupted half-way"
    finished = {}
    for stored in first.values():
        if stored["status"] == "ok":
            finished.update({stored[c]: (out / stored[c]).stat().st_mtime_ns for c in OUTPUT_COLUMNS if stored.get(c)})

    run(command, expect=1)
    rows = report_rows(out)
    assert len(rows) == 22 and len({r["input"] for r in rows}) == 22
    assert sum(r["status"] == "ok" for r in rows) == 20
    listed = {r[c] for r in rows for c in OUTPUT_COLUMNS if r.get(c)}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "records" not in p.parts}
    assert on_disk == listed | set(REPORT_FILES)  # nothing left half-written, nothing twice
    reused = {r[c] for r in rows if r["reused"] for c in OUTPUT_COLUMNS if r.get(c)}
    assert reused and reused <= set(finished)
    assert all((out / name).stat().st_mtime_ns == finished[name] for name in reused)  # not segmented again


def test_sharded_config_without_torchrun_says_how_to_launch(folder, model_args, tmp_path):
    proc = run_bundle(
        "run",
        "--config_file",
        SHARDED_CONFIGS,
        "--dataset_dir",
        str(folder),
        "--output_dir",
        str(tmp_path / "out"),
        *model_args,
        expect=None,
    )
    assert proc.returncode != 0 and "torchrun" in proc.stderr
