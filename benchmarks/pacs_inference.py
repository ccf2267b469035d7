"""Batch inference from a PACS against the same files in a folder, in one run.

Makes ``--files`` 12-bit DX radiographs of 2000x2500 pixels, stores them in a real Orthanc on loopback
(``pacs/stack.py``), and times, each as the whole command a user runs:

* ``folder``: ``--dataset_dir`` on the files, every default output (SEG included), the baseline;
* ``PACS``: ``--dicomweb#url`` on Orthanc: the instances found (QIDO-RS), retrieved (WADO-RS), segmented the same
  way, and each SEG stored back (STOW-RS);
* ``PACS, again``: the same command into a new output folder, which finds every SEG in the PACS already.

    python benchmarks/pacs_inference.py [--files 40] [--weights model.pt] [--workdir DIR]

Needs the PACS stack (``bash pacs/setup_pacs.sh``). Weights: random unless given (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import BUNDLE, REPO, machine
from end_to_end import dicom_folder, timed, weights

sys.path.insert(0, str(REPO))
from pacs.stack import Orthanc, missing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--weights", default=None, help="model.pt to use (default: random weights)")
    parser.add_argument("--workdir", default=None)
    options = parser.parse_args()
    absent = missing(viewer=False, browser=False)
    if absent:
        raise SystemExit("needs " + "; ".join(absent))
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        work = Path(folder)
        model = weights(work, options.weights)
        src = dicom_folder(work / "dicom", options.files)
        base = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
        base += ["--ckpt_path", str(model)]
        with Orthanc(work / "orthanc") as pacs:
            for path in sorted(src.iterdir()):
                pacs.upload(path)
            times = {
                "folder": timed([*base, "--dataset_dir", str(src), "--output_dir", str(work / "out_folder")], BUNDLE),
                "PACS": timed([*base, "--dicomweb#url", pacs.dicomweb_url, "--output_dir", str(work / "out_pacs")]),
                "PACS, again": timed(
                    [*base, "--dicomweb#url", pacs.dicomweb_url, "--output_dir", str(work / "out_again")]
                ),
            }
    print(f"machine: {machine()}")
    print(f"{options.files} DX of 2000x2500 (12-bit), every default output (SEG included); Orthanc on loopback")
    for name, seconds in times.items():
        print(
            f"  {name:12s} {seconds:6.1f} s  {seconds / options.files * 1000:6.0f} ms per instance  "
            f"{seconds / times['folder']:.2f}x the folder run's time"
        )


if __name__ == "__main__":
    main()
