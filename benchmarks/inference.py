"""Inference speed of the network: the bundle's fast path against the original fp32 eager loop, same run; mask parity.

Network only (random grey input, no data loading), at each image size and batch size asked for, each variant timed in
its own process so that its peak memory (RSS) is its own:

* ``original``: the tutorial's loop, the FCN in plain fp32 eager PyTorch, NCHW tensors, ``torch.no_grad``;
* ``bundle``: what ``configs/inference.json`` runs, :class:`scripts.acceleration.FastNetwork` with ``precision auto``
  (bf16 autocast on CPUs with native bf16 and on recent GPUs) and channels-last tensors;
* ``bundle+compile``: the same under ``torch.compile`` (inductor, weights frozen), timed after its warm-up, which is
  printed separately (``--variants`` to choose);
* ``int8`` (needs ``pip install torchao``; CPU): PyTorch 2 export post-training static quantisation with torchao's x86
  inductor quantizer, calibrated on 16 real radiographs, compiled; an experiment, not a bundle path: its masks at
  224x224 are compared with fp32's (``--ckpt_path`` weights) and printed.

Each line gives images/s, the ratio to ``original`` at the same size and batch, achieved FLOP/s against the
measured peak of a large bf16 (and fp32) matrix multiply on this machine, and peak RSS.

Parity (``--parity``): runs ``configs/inference.json`` over the real sample's images twice, ``--precision fp32`` and
the default, and prints the Dice of every fast-path mask against its fp32 mask (target >= 0.995 per image).
Weights: ``--ckpt_path`` (default ``bundle/models/model.pt``); trained weights are needed for parity to mean anything.

    python benchmarks/inference.py                                  # 224 and 512, batch 1 and 8
    python benchmarks/inference.py --parity --ckpt_path bundle/models/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from common import BUNDLE, REAL_SAMPLE, forward_flops, machine, measured_peak_flops, peak_rss_mb, throughput

CKPT_PATH = [str(BUNDLE / "models" / "model.pt")]  # set from --ckpt_path: the int8 variant is calibrated on it
VARIANTS = ("original", "bundle", "bundle+compile", "int8")


def build(variant: str, device: str, size: int, batch: int) -> torch.nn.Module:
    from scripts.acceleration import FastNetwork
    from scripts.network import VGG16FCN

    torch.manual_seed(0)
    net = VGG16FCN().to(device).eval()
    if variant == "original":
        return net
    if variant == "int8":
        return quantised_int8(net, size, batch)
    fast = FastNetwork(net, device, "auto", channels_last=True).eval()
    if variant == "bundle+compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # fold the (inference-only) weights into the compiled graph
        fast = torch.compile(fast)
    return fast


def calibration_images(size: int, count: int = 16) -> torch.Tensor:
    """Real radiographs (grey, [0, 1], resized) for INT8 calibration; random images if the sample is absent."""
    from PIL import Image

    files = sorted((REAL_SAMPLE / "images").glob("*.png"))[:count]
    if not files:
        return torch.rand(count, 1, size, size)
    return torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(f).convert("L").resize((size, size)), np.float32) / 255)[None]
            for f in files
        ]
    )


def quantised_int8(net: torch.nn.Module, size: int, batch: int) -> torch.nn.Module:
    """``net`` quantised to INT8 (static, per-channel weights) with torchao's PT2E x86 inductor flow, compiled for
    batches of ``batch`` images of ``size`` x ``size``."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True
    weights = os.environ.get("BENCH_CKPT")
    if weights and os.path.isfile(weights):
        net.load_state_dict(torch.load(weights, weights_only=True))
    images = calibration_images(size)
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(net, (images[:batch],)).module(), quantizer)
        for chunk in images.split(batch):
            prepared(chunk)
        quantised = torch.compile(convert_pt2e(prepared))
        reference = net(images).argmax(1)
        masks = torch.cat([quantised(chunk) for chunk in images.split(batch)]).argmax(1)
    dice = 2 * (reference & masks).sum((1, 2)) / (reference.sum((1, 2)) + masks.sum((1, 2))).clamp(min=1)
    print(f"int8 vs fp32 masks at {size}x{size}: Dice mean {dice.mean():.4f}, worst {dice.min():.4f}", file=sys.stderr)
    return quantised


def time_variant(variant: str, size: int, batch: int, seconds: float) -> dict:
    """Images/s of one variant (run in a fresh process by ``main``) and this process's peak RSS."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = build(variant, device, size, batch)
    x = torch.rand(batch, 1, size, size, device=device)

    def step():
        with torch.no_grad():
            net(x)

    start = time.perf_counter()
    step()  # the first call compiles (for bundle+compile) and tunes oneDNN / cuDNN
    warmup_s = time.perf_counter() - start
    images_per_s = throughput(step, batch, seconds=seconds)
    memory = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return {"images_per_s": images_per_s, "warmup_s": warmup_s, "peak_mb": memory}


def run_worker(variant: str, size: int, batch: int, seconds: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, str(size), str(batch), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_CKPT": CKPT_PATH[0]},
    )
    if out.returncode == 0 and variant == "int8":
        print("  " + next((line for line in out.stderr.splitlines() if line.startswith("int8 vs fp32")), ""))
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def parity(ckpt_path: str, data: str, image_size: int) -> None:
    """Dice of the default (fast) inference masks against fp32 masks, per real image, through inference.json."""
    from PIL import Image

    images = os.path.join(data, "images")
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "auto"):
            subprocess.run(
                [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                 "--dataset_dir", images, "--output_dir", os.path.join(tmp, precision), "--ckpt_path", ckpt_path,
                 "--precision", precision, "--image_size", f"[{image_size},{image_size}]",
                 "--write_seg", "False", "--write_overlay", "False"],
                cwd=BUNDLE, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        dice = {}
        for name in sorted(os.listdir(os.path.join(tmp, "fp32"))):
            if not name.endswith("_mask.png"):
                continue
            a = np.asarray(Image.open(os.path.join(tmp, "fp32", name))) > 0
            b = np.asarray(Image.open(os.path.join(tmp, "auto", name))) > 0
            dice[name] = 2 * (a & b).sum() / max(1, a.sum() + b.sum())
    worst = min(dice, key=dice.get)
    print(
        f"\nparity on {len(dice)} real radiographs (inference.json, default precision vs fp32, original grid): "
        f"mean Dice {statistics.mean(dice.values()):.5f}, worst {dice[worst]:.5f} ({worst}); "
        f"{sum(d >= 0.995 for d in dice.values())}/{len(dice)} images >= 0.995"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:3]))
    parser.add_argument("--seconds", type=float, default=10.0, help="time each variant at least this long")
    parser.add_argument("--parity", action="store_true", help="also compare fast-path masks with fp32 masks")
    parser.add_argument("--ckpt_path", default=str(BUNDLE / "models" / "model.pt"))
    parser.add_argument("--data", default=str(REAL_SAMPLE))
    parser.add_argument("--parity_image_size", type=int, default=224)
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    CKPT_PATH[0] = os.path.abspath(args.ckpt_path)
    if args.worker:
        variant, size, batch = args.worker
        print(json.dumps(time_variant(variant, int(size), int(batch), args.seconds)))
        return

    from scripts.network import VGG16FCN

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}, {torch.get_num_threads()} threads")
    peak_bf16 = measured_peak_flops(device, torch.bfloat16)
    peak_fp32 = measured_peak_flops(device, torch.float32)
    print(f"measured matmul peak: bf16 {peak_bf16 / 1e12:.2f} TFLOP/s, fp32 {peak_fp32 / 1e12:.2f} TFLOP/s")
    memory_kind = "peak GPU memory" if device == "cuda" else "peak RSS"
    for size in args.sizes:
        flops = forward_flops(VGG16FCN().eval(), (1, 1, size, size))
        for batch in args.batches:
            print(f"\n{size}x{size}, batch {batch} ({flops / 1e9:.1f} GFLOP per image)")
            baseline = None
            for variant in args.variants:
                r = run_worker(variant, size, batch, args.seconds)
                if "error" in r:
                    print(f"  {variant:16s} failed: {r['error']}")
                    continue
                ips = r["images_per_s"]
                baseline = ips if variant == "original" else baseline
                ratio = f"{ips / baseline:5.2f}x" if baseline else "   n/a"
                achieved = ips * flops
                print(
                    f"  {variant:16s} {ips:8.2f} img/s  {ratio} original  {achieved / 1e12:6.3f} TFLOP/s "
                    f"({100 * achieved / peak_bf16:5.1f}% of bf16 peak, {100 * achieved / peak_fp32:5.1f}% of fp32)"
                    f"  {memory_kind} {r['peak_mb']:6.0f} MiB  first call {r['warmup_s']:.1f} s"
                )
    if args.parity:
        if not os.path.isfile(args.ckpt_path):
            raise SystemExit(f"--parity needs trained weights; {args.ckpt_path} does not exist")
        parity(os.path.abspath(args.ckpt_path), args.data, args.parity_image_size)


if __name__ == "__main__":
    main()
