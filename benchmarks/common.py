"""Helpers shared by the benchmarks: the bundle on sys.path, FLOP counting, a measured compute ceiling, timing."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
REAL_SAMPLE = REPO.parent / "shared" / "data" / "cxr-real-sample"
sys.path.insert(0, str(BUNDLE))


def machine() -> str:
    """One line naming the hardware the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}{gpu}"


def forward_flops(network: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass on a batch of ``shape`` (PyTorch's own counter; 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(torch.rand(*shape))
    return float(counter.get_total_flops())


def measured_peak_flops(device: str = "cpu", dtype: torch.dtype = torch.bfloat16, n: int = 2048) -> float:
    """FLOP/s of a large matrix multiply in ``dtype``: the ceiling the convolutions could reach on this machine."""
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(step, items_per_step: int, warmup: int = 2, seconds: float = 20.0, min_steps: int = 3) -> float:
    """Items/s of ``step()`` after ``warmup`` calls, over at least ``min_steps`` calls or ``seconds``."""
    for _ in range(warmup):
        step()
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        step()
        steps += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * items_per_step / (time.perf_counter() - start)
