"""What a bundle makes of fixed inputs, as one JSON digest, so that two versions of the bundle can be compared: a config
redesign must leave the masks, the SEG pixels, the report rows, the evaluation metrics and a short training run as they
were.

    python benchmarks/behaviour_digest.py --bundle bundle --ckpt W.pt --data DATA --out new.json
    python benchmarks/behaviour_digest.py --bundle /old/bundle --ckpt W.pt --data DATA --out old.json
    python benchmarks/behaviour_digest.py --compare old.json new.json

The inputs are the data folder's images as PNG and, written here with pydicom, as DX DICOM (so the SEG path runs too).
Batch inference runs on them with ``configs/inference.json``; evaluation with ``inference.json`` + ``evaluate.json``
on the images and masks. The digest holds a SHA-256 of every mask PNG and of every SEG's pixel data, the report rows
without run-specific fields (times, paths of the output folder, UIDs derived from the fingerprint), and the per-case
Dice and the mean of every metric of the evaluation. Training runs ``configs/train.json`` for 3 epochs on the data
folder (seeded, no loader workers): the digest holds every logged loss and validation Dice (the training curve) and a
SHA-256 of the trained model's weights.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# report columns that differ between any two runs, or between fingerprints, whatever the behaviour
RUN_SPECIFIC = ("seconds", "reused", "seg_sop_instance_uid", "seg_series_instance_uid", "finished")


def write_dicom(png: Path, path: Path) -> None:
    """A DX image with the PNG's pixels and a fixed identity, so both bundles see the same file."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[png.name, "sop"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[png.name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[png.name, "series"])
    ds.Modality, ds.PatientID, ds.PatientName = "DX", png.stem, "Digest^Case"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def run(bundle: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=bundle, check=True, capture_output=True, text=True
    )
    return proc.stdout + proc.stderr


def training_curve(bundle: Path, data: Path, work: Path) -> dict:
    """A 3-epoch training run's logged losses and validation Dice, and its model's weights as one SHA-256."""
    log = run(
        bundle, "training", "--config_file", "configs/train.json", "--dataset_dir", str(data), "--max_epochs", "3",
        "--num_workers", "0", "--output_dir", str(work / "train"), "--ckpt_dir", str(work / "models"),
    )  # fmt: skip
    curve = re.findall(r"(train_loss|val_mean_dice|val_mean_iou|train_mean_dice): ([0-9.]+)", log)
    state = torch.load(work / "models" / "model_trained.pt", map_location="cpu", weights_only=True)
    weights = hashlib.sha256()
    for name in sorted(state):
        weights.update(name.encode() + state[name].numpy().tobytes())
    return {"curve": [f"{name} {value}" for name, value in curve], "weights": weights.hexdigest()}


def digest(bundle: Path, ckpt: str, data: Path, work: Path) -> dict:
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    images = sorted((data / "images").glob("*.png"))
    for png in images:
        (inputs / png.name).write_bytes(png.read_bytes())
        write_dicom(png, inputs / f"{png.stem}.dcm")
    out, evaluation = work / "out", work / "eval"
    run(
        bundle,
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(out),
        "--ckpt_path",
        ckpt,
        "--write_overlay",
        "false",
    )
    run(
        bundle,
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(evaluation),
        "--ckpt_path",
        ckpt,
    )
    report = json.loads((out / "report.json").read_text())
    rows = sorted(({k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in report["rows"]), key=str)
    masks = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*_mask.png"))}
    segs = {p.name: hashlib.sha256(pydicom.dcmread(p).PixelData).hexdigest() for p in sorted(out.glob("*_seg.dcm"))}
    with open(evaluation / "dice_raw.csv") as f:
        dice = {os.path.basename(row["filename"]): row["mean"] for row in csv.DictReader(f)}
    means = {}
    with open(evaluation / "metrics.csv") as f:
        for line in f:
            name, value = line.strip().replace(",", "\t").split("\t")[:2]
            means[name] = value
    return {
        "masks": masks, "segs": segs, "rows": rows, "dice": dice, "metrics": means,
        "training": training_curve(bundle, data, work),
    }  # fmt: skip


def compare(old: dict, new: dict) -> int:
    differences = 0
    for part in ("masks", "segs", "rows", "dice", "metrics", "training"):
        same = old[part] == new[part]
        differences += not same
        print(f"{part}: {len(old[part])} entries, {'identical' if same else 'DIFFERENT'}")
        if not same and isinstance(old[part], dict):
            for key in sorted(set(old[part]) | set(new[part])):
                if old[part].get(key) != new[part].get(key):
                    print(f"  {key}: {old[part].get(key)} -> {new[part].get(key)}")
        elif not same:
            for a, b in zip(old[part], new[part], strict=False):
                if a != b:
                    print("  ", {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)})
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--ckpt")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    with tempfile.TemporaryDirectory(prefix="digest-") as work:
        result = digest(args.bundle.resolve(), os.path.abspath(args.ckpt), args.data.resolve(), Path(work))
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.out}: {len(result['masks'])} masks, {len(result['segs'])} SEGs, {len(result['rows'])} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
