"""Training throughput: the bundle's MONAI trainer (train.json) against the original tutorial loop, same run.

The original loop is the tutorial's: FCN in plain fp32 eager PyTorch, NCHW, cross-entropy, Adam (lr 1e-3, weight decay
2e-4), batch 4 at 224x224, data already in memory. The bundle's trainer is built from configs/train.json exactly as
`monai.bundle run training` builds it (data loading, augmentation, loss, metrics and handlers included) on the
synthetic default data, and timed over whole epochs after a warm-up epoch.

    python benchmarks/training.py [--epochs 2] [--cases 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from common import BUNDLE, forward_flops, machine, measured_peak_flops, throughput
from ignite.engine import Events
from monai.bundle import ConfigParser


def original_loop_images_per_s(batch: int, size: int, device: str, seconds: float) -> float:
    from scripts.network import VGG16FCN

    net = VGG16FCN().to(device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=2e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.rand(batch, 3, size, size, device=device)
    labels = (torch.rand(batch, size, size, device=device) > 0.7).long()

    def step():
        optimiser.zero_grad()
        loss_fn(net(images), labels).backward()
        optimiser.step()

    return throughput(step, batch, seconds=seconds)


def bundle_trainer_images_per_s(epochs: int, cases: int, overrides: dict) -> tuple[float, str]:
    from scripts.data.synthetic import generate_synthetic_dataset

    os.chdir(BUNDLE)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic_dataset(os.path.join(tmp, "data"), num_cases=cases)
        parser = ConfigParser()
        parser.read_config("configs/train.json")
        parser.update(
            {
                "dataset_dir": data,
                "ckpt_dir": os.path.join(tmp, "models"),
                "output_dir": os.path.join(tmp, "eval"),
                "val_fraction": 0.1,
                "test_fraction": 0.0,
                "max_epochs": epochs + 1,
                "val_interval": 1000,  # training speed only
                **overrides,
            }
        )
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        times: list[float] = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: times.append(time.perf_counter()))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.append(time.perf_counter()))
        trainer.run()
        n_images = len(parser.get_parsed_content("datalist")["training"])
        epoch_seconds = [times[i + 1] - times[i] for i in range(2, len(times), 2)]  # skip the warm-up epoch
        precision = parser.get_parsed_content("fast_network").precision
        return n_images * len(epoch_seconds) / sum(epoch_seconds), precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs of the bundle trainer (after 1 warm-up)")
    parser.add_argument("--cases", type=int, default=40, help="synthetic cases (90%% train)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time the original loop at least this long")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from scripts.network import VGG16FCN

    train_flops_per_image = 3 * forward_flops(VGG16FCN().eval(), (1, 1, 224, 224))  # forward + ~2x for backward
    peak = measured_peak_flops(device)
    print(f"machine: {machine()}")
    print(f"training FLOP per 224x224 image (fwd+bwd ~ 3x fwd): {train_flops_per_image / 1e9:.1f} G")
    original = original_loop_images_per_s(4, 224, device, args.seconds)
    bundle, precision = bundle_trainer_images_per_s(
        args.epochs, args.cases, {"num_workers": 0 if device == "cpu" else 4}
    )
    for name, ips in (("original fp32 eager loop", original), (f"bundle trainer ({precision}, channels-last)", bundle)):
        print(
            f"{name:45s} {ips:6.2f} img/s  {ips * train_flops_per_image / 1e12:6.2f} TFLOP/s "
            f"({100 * ips * train_flops_per_image / peak:4.1f}% of measured bf16 matmul peak {peak / 1e12:.2f} TFLOP/s)"
        )
    print(f"ratio bundle / original: {bundle / original:.2f}x")


if __name__ == "__main__":
    main()
