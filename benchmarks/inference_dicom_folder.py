"""Batch inference over a folder of large DICOMs: files/s and peak memory of `monai.bundle run` with inference.json.

Writes N single-frame DX DICOMs of 2000x2500 pixels (12-bit, from the synthetic phantom, uncompressed unless
``--syntax`` says otherwise) and runs ``python -m monai.bundle run --config_file configs/inference.json`` on them as a
user would (all outputs: mask PNG, DICOM SEG, overlay, report). Printed, all measured in this run:

* end-to-end files/s (whole command, start-up included) and steady-state files/s (the engine's own run time);
* the network alone on the same batches (random 1x224x224 input, same batch size), as the original fp32 eager loop
  and as the bundle's fast path, the baselines the end-to-end rate is compared with;
* peak memory of the inference process tree (main process + DataLoader workers, sampled every 0.1 s; PSS, which
  counts pages the workers share with the main process once, and RSS, which counts them per process), on N/4 files
  and on N files: their ratio shows whether memory stays flat as the folder grows.

    python benchmarks/inference_dicom_folder.py [--files 200] [--syntax explicit|rle|jpegls|j2k] [--workdir DIR]

Weights: ``bundle/models/model.pt`` if present, else a randomly initialised network (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from common import BUNDLE, machine, throughput

SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "j2k": "1.2.840.10008.1.2.4.90",
}


def write_dicoms(folder: str, count: int, syntax: str, rows: int = 2500, columns: int = 2000) -> None:
    """``count`` DX DICOMs of ``rows`` x ``columns`` (12 bits stored) made from a few phantom images."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    from scripts.data.synthetic import synthetic_case

    os.makedirs(folder, exist_ok=True)
    images = []
    for seed in range(8):
        image = synthetic_case(seed)[0]
        big = np.asarray(Image.fromarray(image).resize((columns, rows), Image.BILINEAR), np.uint16) * 16
        images.append(big + np.random.default_rng(seed).integers(0, 16, big.shape, dtype=np.uint16))
    study = generate_uid()
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = (
            DigitalXRayImageStorageForPresentation,
            ds.file_meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "DX", f"BENCH{i:04d}", "Bench^Phantom", 1
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = images[i % len(images)].tobytes()
        if syntax != "explicit":
            ds.compress(SYNTAXES[syntax])
        ds.save_as(os.path.join(folder, f"IM{i:05d}"), enforce_file_format=True)


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """``(RSS, PSS)`` of ``pid`` and all its descendants in MiB, from /proc. RSS counts the pages DataLoader workers
    share with the main process once per process; PSS splits shared pages between them, so its sum is the memory the
    run really uses."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if ":" in line and "kB" in line}
            rss, pss = rss + fields.get("Rss", 0), pss + fields.get("Pss", 0)
        except (OSError, ValueError):
            pass
    return rss / 1024, pss / 1024


def run_inference(folder: str, output: str, extra: list[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        folder,
        "--output_dir",
        output,
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=BUNDLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0, 0.0]

    def sample():
        while proc.poll() is None:
            rss, pss = _tree_memory_mb(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = proc.communicate()[0]
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"inference failed ({proc.returncode}):\n{log[-4000:]}")
    match = re.search(r"Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)", log)
    engine = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else float("nan")
    return {"wall_s": wall, "engine_s": engine, "peak_rss_mb": peak[0], "peak_pss_mb": peak[1]}


def network_only_images_per_s(batch: int, size: int, seconds: float, fast: bool = False) -> float:
    """The network alone on random input: the original fp32 eager loop, or the bundle's fast path (``fast``)."""
    from scripts.acceleration import FastNetwork
    from scripts.network import VGG16FCN

    net = VGG16FCN().eval()
    net = FastNetwork(net, "cpu", "auto", channels_last=True) if fast else net
    x = torch.rand(batch, 1, size, size)

    def step():
        with torch.inference_mode():
            net(x)

    return throughput(step, batch, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--syntax", choices=sorted(SYNTAXES), default="explicit")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where to write the DICOMs and outputs (default: a temp dir)")
    args = parser.parse_args()

    weights = BUNDLE / "models" / "model.pt"
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        extra = ["--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers)]
        if not weights.is_file():
            from scripts.network import VGG16FCN

            torch.manual_seed(0)
            torch.save(VGG16FCN().state_dict(), os.path.join(tmp, "model.pt"))
            extra += ["--ckpt_path", os.path.join(tmp, "model.pt")]
        small, large = max(1, args.files // 4), args.files
        print(f"machine: {machine()}")
        print(f"writing {large} DICOMs of 2000x2500 ({args.syntax}) ...", flush=True)
        write_dicoms(os.path.join(tmp, "dicom"), large, args.syntax)
        os.makedirs(os.path.join(tmp, "dicom_small"))
        for name in sorted(os.listdir(os.path.join(tmp, "dicom")))[:small]:
            os.link(os.path.join(tmp, "dicom", name), os.path.join(tmp, "dicom_small", name))
        first = run_inference(os.path.join(tmp, "dicom_small"), os.path.join(tmp, "out_small"), extra)
        full = run_inference(os.path.join(tmp, "dicom"), os.path.join(tmp, "out"), extra)
        net = network_only_images_per_s(args.batch_size, 224, seconds=15)
        fast = network_only_images_per_s(args.batch_size, 224, seconds=15, fast=True)

    print(f"\nbatch {args.batch_size}, {args.num_workers} workers, CPU threads {torch.get_num_threads()}")
    print(
        f"end to end, {large} files: {full['wall_s']:.1f} s -> {large / full['wall_s']:.2f} files/s "
        f"(engine only: {large / full['engine_s']:.2f} files/s)"
    )
    engine_rate = large / full["engine_s"]
    for label, rate in (("fp32 eager", net), ("bundle fast path (what inference.json runs)", fast)):
        print(
            f"network alone at 224, {label}: {rate:.2f} images/s; end-to-end (engine) time / network-only time = "
            f"{rate / engine_rate:.2f}"
        )
    for kind in ("pss", "rss"):
        a, b = first[f"peak_{kind}_mb"], full[f"peak_{kind}_mb"]
        print(
            f"peak {kind.upper()} of the process tree: {small} files {a:.0f} MiB, {large} files {b:.0f} MiB, "
            f"ratio {b / a:.2f}"
        )


if __name__ == "__main__":
    main()
