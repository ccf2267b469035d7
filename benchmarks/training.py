"""Training throughput: the bundle's MONAI trainer (train.json) against the tutorial's loop, measured in the same run.

Each variant runs in its own process, at the recipe's image size (``image_size`` of train.json, or ``--size``):

* the tutorial's loop: FCN in plain fp32 eager PyTorch, NCHW, cross-entropy, Adam (lr 1e-3, weight decay 2e-4), batch
  4, the data already in memory;
* the training step alone: the bundle's network, loss and optimiser as train.json builds them (bf16 autocast and
  channels-last where the CPU has native bf16), no data loading, no handlers: the ceiling of the trainer;
* the bundle's trainer built from train.json exactly as ``monai.bundle run training`` builds it (data loading,
  augmentation, loss, metrics, handlers and checkpoints included), on the synthetic default data, timed over whole
  epochs between a warm-up epoch and the last one (whose final checkpoint a 200-epoch run pays once); once as
  configured and once with ``--train#trainer#network#compile true`` (the first epoch's extra time, the compilation,
  reported);
* with ``--baseline_bundle DIR``, the trainer of another bundle folder (e.g. the version before a change).

    python benchmarks/training.py [--epochs 3] [--cases 40] [--baseline_bundle /tmp/old/bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import BUNDLE, forward_flops, machine, measured_peak_flops, throughput

BATCH = 4


def tutorial_loop(size: int, seconds: float) -> dict:
    from scripts.network import VGG16FCN

    net = VGG16FCN().train()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=2e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.rand(BATCH, 3, size, size)
    labels = (torch.rand(BATCH, size, size) > 0.7).long()

    def step():
        optimiser.zero_grad()
        loss_fn(net(images), labels).backward()
        optimiser.step()

    return {"images_per_s": throughput(step, BATCH, seconds=seconds)}


def training_step(size: int, seconds: float) -> dict:
    """The step train.json's trainer runs, without the data loader and the handlers."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"dataset_dir": "unused", "batch_size": BATCH})
    fast, loss_fn = parser.get_parsed_content("train#trainer#network"), parser.get_parsed_content("loss")
    optimiser = parser.get_parsed_content("optimizer")
    fast.train()
    images = torch.rand(BATCH, 1, size, size)
    labels = (torch.rand(BATCH, 1, size, size) > 0.7).float()

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss_fn(fast(images), labels).backward()
        optimiser.step()

    return {"images_per_s": throughput(step, BATCH, seconds=seconds), "precision": fast.precision}


def trainer(bundle: str, epochs: int, cases: int, overrides: dict) -> dict:
    """images/s of train.json's trainer in ``bundle`` over ``epochs`` epochs between a warm-up epoch and the last."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    os.chdir(bundle)
    sys.path.insert(0, bundle)
    from scripts.data.synthetic import generate_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic_dataset(os.path.join(tmp, "data"), num_cases=cases)
        parser = ConfigParser()
        parser.read_config("configs/train.json")
        parser.update(
            {
                "dataset_dir": data,
                "ckpt_dir": os.path.join(tmp, "models"),
                "output_dir": os.path.join(tmp, "eval"),
                "split": {"val_fraction": 0.1, "test_fraction": 0.0},
                "max_epochs": epochs + 2,  # a warm-up epoch, the timed ones, and the last (its final save not timed)
                "val_interval": 1000,  # training speed only
                **overrides,
            }
        )
        parser.get_parsed_content("initialize")
        engine = parser.get_parsed_content("train#trainer")
        times: list[float] = []
        engine.add_event_handler(Events.STARTED, lambda e: times.append(time.perf_counter()))
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.append(time.perf_counter()))
        engine.run()
        n_images = len(parser.get_parsed_content("datalist")["training"])
        steady = [b - a for a, b in zip(times[1:-2], times[2:-1], strict=True)]  # neither the first nor the last
        first_epoch = times[1] - times[0]
        return {
            "images_per_s": n_images * len(steady) / sum(steady),
            "first_epoch_extra_s": first_epoch - sum(steady) / len(steady),
            "precision": parser.get_parsed_content("train#trainer#network").precision,
        }


def in_subprocess(function: str, **kwargs) -> dict:
    """Run ``function(**kwargs)`` of this file in a fresh Python process (no shared compiled code or thread pools)."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import training; "
        f"print('RESULT' + json.dumps(training.{function}(**json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, cwd=str(BUNDLE)
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode or not lines:
        raise SystemExit(f"{function}({kwargs}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each trainer (after 1 warm-up)")
    parser.add_argument("--cases", type=int, default=40, help="synthetic cases (90%% train)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time each bare loop at least this long")
    parser.add_argument("--size", type=int, default=None, help="image size (default: train.json's image_size)")
    parser.add_argument("--baseline_bundle", default=None, help="also time the trainer of this (older) bundle folder")
    parser.add_argument(
        "--no_compile", action="store_true", help="skip the compiled trainer (train#trainer#network#compile)"
    )
    args = parser.parse_args()
    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    size = args.size or recipe["image_size"][0]
    from scripts.network import VGG16FCN

    flops = 3 * forward_flops(VGG16FCN(in_channels=1).eval(), (1, 1, size, size))  # forward + ~2x for backward
    peak = measured_peak_flops("cpu" if not torch.cuda.is_available() else "cuda")
    print(f"machine: {machine()}")
    print(f"{size}x{size}, batch {BATCH}: training FLOP per image (fwd+bwd ~ 3x fwd) {flops / 1e9:.1f} G")
    common = {"epochs": args.epochs, "cases": args.cases}
    size_override = {"image_size": [size, size]}
    runs = {"tutorial loop (fp32 eager, NCHW)": in_subprocess("tutorial_loop", size=size, seconds=args.seconds)}
    if args.baseline_bundle:
        runs["baseline trainer (" + args.baseline_bundle + ")"] = in_subprocess(
            "trainer", bundle=str(Path(args.baseline_bundle).resolve()), overrides=size_override, **common
        )
    runs["training step alone (no data, no handlers)"] = in_subprocess("training_step", size=size, seconds=args.seconds)
    runs["bundle trainer"] = in_subprocess("trainer", bundle=str(BUNDLE), overrides=size_override, **common)
    if not args.no_compile:
        runs["bundle trainer, compiled"] = in_subprocess(
            "trainer", bundle=str(BUNDLE), overrides={**size_override, "train#trainer#network#compile": True}, **common
        )
    reference = runs["tutorial loop (fp32 eager, NCHW)"]["images_per_s"]
    for name, result in runs.items():
        ips = result["images_per_s"]
        extra = f", first epoch +{result['first_epoch_extra_s']:.0f} s" if "first_epoch_extra_s" in result else ""
        print(
            f"{name:55s} {ips:6.2f} img/s {ips / reference:5.2f}x  {ips * flops / 1e12:5.3f} TFLOP/s "
            f"({100 * ips * flops / peak:4.1f}% of the measured bf16 matmul peak {peak / 1e12:.2f} TFLOP/s)"
            f"{' ' + result['precision'] if 'precision' in result else ''}{extra}"
        )


if __name__ == "__main__":
    main()
