"""Batch inference over a folder of hostile files: time, outcome and peak memory against the good files alone.

Builds, with the test suite's seeded generators (``tests/hostile_files.py``), a folder like the one of the hardening
issue: good radiographs (DX, CR MONOCHROME1, RLE, JPEG-LS, JPEG 2000, PNG), hand-made hostile tag values, image bombs
(a PNG header claiming 60000 x 60000, a real 20000 x 20000 PNG of zeros, a DICOM whose Rows x Columns claim 8 GB,
JPEG 2000 codestreams claiming 60000 x 60000), ``--mutations`` seeded random mutations of valid CR/DX files and
PNG/JPEG/NIfTI oddities. Then runs ``python -m monai.bundle run --config_file configs/inference.json`` as a user would,
twice in the same run: on the good files alone (the baseline) and on the whole folder, and prints for each the wall
time, the report's counts and the peak resident memory of the process tree (the largest of the main process and its
DataLoader workers), with the ratios.

    python benchmarks/hostile_inputs.py [--mutations 80] [--workdir DIR]

Weights: ``bundle/models/model.pt`` if present, else a randomly initialised network (the outcome per file does not
depend on them).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from common import BUNDLE, REPO, machine

sys.path.insert(0, str(REPO / "tests"))
import hostile_files as hostile  # noqa: E402  (the test suite's generators, on the path just above)

WRAPPER = (
    "import resource, subprocess, sys\n"
    "proc = subprocess.run([sys.executable, '-m', 'monai.bundle', *sys.argv[1:]])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(proc.returncode)\n"
)


def weights(workdir: Path) -> Path:
    trained = BUNDLE / "models" / "model.pt"
    if trained.is_file():
        return trained
    from scripts.network import VGG16FCN

    path = workdir / "random.pt"
    torch.manual_seed(0)
    torch.save(VGG16FCN(in_channels=1, out_channels=2, pretrained="none").state_dict(), path)
    return path


def run(src: Path, out: Path, model: Path) -> dict:
    """One inference run in a child process: wall time, exit status, statuses, peak RSS of the process tree."""
    args = ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(src), "--output_dir", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args, "--ckpt_path", str(model)], cwd=BUNDLE, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    peak = next(int(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("PEAK_RSS_KB")) / 1024
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "seconds": seconds,
        "exit": proc.returncode,
        "files": len(rows),
        "statuses": Counter(r["status"] for r in rows),
        "peak_mib": peak,
        "tracebacks": (proc.stdout + proc.stderr).count("Traceback"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=80, help="seeded random mutations of valid CR/DX files")
    parser.add_argument("--workdir", default=None, help="where to write the folders (default: a temporary folder)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        root = Path(folder)
        good_src, src = root / "good_only", root / "hostile"
        hostile.write_good_files(good_src / "good")
        good = hostile.write_good_files(src / "good")
        hostile.write_hostile_tags(src / "tags")
        hostile.write_bombs(src / "bombs")
        hostile.write_mutations(src / "mutations", [p for p in good if p.suffix == ".dcm"], options.mutations, seed=14)
        hostile.write_odd_images(src / "odd")
        model = weights(root)
        print(f"machine: {machine()}")
        baseline = run(good_src, root / "out_good", model)
        result = run(src, root / "out_hostile", model)
        for name, r in (("good files only", baseline), ("good + hostile", result)):
            counts = ", ".join(f"{r['statuses'][s]} {s}" for s in ("ok", "skipped", "failed"))
            print(
                f"{name:16s}: {r['files']:4d} files ({counts}), exit {r['exit']}, {r['seconds']:.1f} s, "
                f"peak memory {r['peak_mib']:.0f} MiB, tracebacks in the log: {r['tracebacks']}"
            )
        print(
            f"ratio hostile / good: time {result['seconds'] / baseline['seconds']:.2f}x for "
            f"{result['files'] / baseline['files']:.0f}x the files, peak memory "
            f"{result['peak_mib'] / baseline['peak_mib']:.2f}x"
        )


if __name__ == "__main__":
    main()
