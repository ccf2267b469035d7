"""Package trained weights as the bundle's release model: ``bundle/models/model.pt`` (half precision) and ``model.json``
(settings, SHA-256, release version), and the ``release_weights`` record of ``bundle/configs/metadata.json``.

    .venv/bin/python tools/release_weights.py bundle/models/model_trained.pt --training_time "1 h 52 min on ..." \
        --eval_dir /tmp/release_eval

``--eval_dir`` is an evaluation of the packaged weights on the split's validation cases (``configs/evaluate.json``
with ``--dataset_dir <kaggle-lungs-512> --split#file configs/datalist_kaggle_lungs_512.json --split#part
validation``): its per-case Dice becomes ``eval_metrics`` in ``metadata.json``.

The weights come from ``configs/train.json`` trained on ``kaggle-lungs-512`` with the bundle's split file (the card's
"Reproducing the release weights"). Floating-point tensors are stored as float16: it halves the file (75 -> 37 MB)
and the masks do not measurably change (benchmarks/README.md, "Release weights"); the conversion refuses weights
that float16 cannot hold (any magnitude above 65504) rather than store infinities.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))

from scripts.io.weights import file_sha256  # noqa: E402
from scripts.settings import trained_settings  # noqa: E402

HALF_MAX = torch.finfo(torch.float16).max


def half_precision(state: dict) -> dict:
    """The state dict with its floating-point tensors as float16 (integer buffers unchanged)."""
    too_large = [k for k, t in state.items() if t.is_floating_point() and t.abs().max() > HALF_MAX]
    if too_large:
        raise SystemExit(f"float16 cannot hold {', '.join(too_large)}: keep these weights in float32")
    return {k: t.half() if t.is_floating_point() else t for k, t in state.items()}


def validation_metrics(dice_csv: Path) -> dict:
    """``eval_metrics`` from MetricsSaver's per-case Dice (``filename,...,mean``)."""
    with open(dice_csv) as f:
        values = [float(row["mean"]) for row in csv.DictReader(f)]
    return {
        "mean_dice": round(statistics.mean(values), 4),
        "median_dice": round(statistics.median(values), 4),
        "worst_dice": round(min(values), 4),
        "validation_cases": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="the trained model (train.json's models/model_trained.pt)")
    parser.add_argument("--training_time", required=True, help="how long the training took, and on what")
    parser.add_argument("--commit", default=None, help="the commit whose code trained them (default: HEAD)")
    parser.add_argument("--eval_dir", default=None, help="evaluate.json's output folder for the validation cases")
    parser.add_argument(
        "--recipe",
        default="configs/train.json defaults",
        help="how they were trained: train.json and the overrides of the training command",
    )
    args = parser.parse_args()

    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    commit = args.commit or subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    released = BUNDLE / "models" / "model.pt"
    released.parent.mkdir(exist_ok=True)
    torch.save(half_precision(state), released)
    digest = file_sha256(str(released))
    settings = {**trained_settings(args.weights), "sha256": digest, "release": metadata["version"]}
    released.with_suffix(".json").write_text(json.dumps(settings, indent=4) + "\n")
    metadata["release_weights"] = {
        "path": "models/model.pt",
        "release": metadata["version"],
        "sha256": digest,
        "dtype": "float16",
        "data": "kaggle-lungs-512: 602 training cases of configs/datalist_kaggle_lungs_512.json (Shenzhen 483, "
        "Montgomery 119), 67 validation cases",
        "recipe": args.recipe,
        "commit": commit,
        "training_time": args.training_time,
        "license": "CC BY-NC-SA 4.0 (inherited from the Shenzhen lung masks), see docs/data_license.txt",
    }
    if args.eval_dir:
        metadata["eval_metrics"] = validation_metrics(Path(args.eval_dir) / "dice_raw.csv")
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    print(f"{released}: {released.stat().st_size / 1e6:.1f} MB, SHA-256 {digest}; metadata.json updated")


if __name__ == "__main__":
    main()
