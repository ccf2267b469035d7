"""Run fast and lean: the network in the fastest numerically safe form for its device, and memory that stays flat
over thousands of large images.

On CPUs with native bf16 (AVX512-BF16 / AMX, e.g. Xeon Sapphire Rapids and newer) convolutions run 3-5x faster in bf16
with channels-last tensors than in plain fp32; on CUDA, channels-last plus fp16/bf16 autocast uses tensor cores.
:class:`FastNetwork` wraps the bundle's network with that policy, so configs keep one plain ``network`` (its state dict
is what checkpoints hold) and hand the wrapper to the MONAI engines. Outputs are returned as fp32, so losses, softmax
and metrics are computed at full precision.

:func:`return_large_buffers_to_os`: glibc's ``malloc`` serves a buffer from ``mmap`` (and gives it back to the system
on ``free``) only when it is larger than its mmap threshold, and it raises that threshold to the size of every such
buffer freed, up to 32 MiB. After the first few radiographs, the 10-40 MiB arrays of a 2000x2500 image (decoded
pixels, float copies, resized tensors) come from the heap instead, where freed blocks fragment and resident memory
creeps up with the number of files (measured: DataLoader workers grew from 0.15 to 0.45 GiB of private memory over 120
files). A fixed threshold stops both: large buffers always go back to the system.

:func:`cpu_share` and :func:`use_cpu_threads`: batch inference keeps the cores busy with DataLoader workers (decode,
pre-processing) and writer processes (post-processing, files); the network's own thread pool gets what is left, so
that the processes do not fight over the same cores (measured on 2 cores: 1 network thread beside 2 + 2 processes is
15% faster end to end than PyTorch's default of one thread per core).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import platform

import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type
from torch import nn

from .settings import is_on

__all__ = [
    "FastNetwork",
    "cpu_share",
    "cpu_supports_bf16",
    "default_loader_workers",
    "default_write_processes",
    "freeze_startup_objects",
    "prepare_device",
    "prepare_process",
    "resolve_precision",
    "return_large_buffers_to_os",
    "use_cpu_threads",
]

logger = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# the layers whose parameters autocast casts to its lower precision (its convolution and matrix product ops)
_AUTOCAST_LAYERS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic that oneDNN uses (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``"auto"`` into ``"bf16"``, ``"fp16"`` or ``"fp32"`` for ``device``; check explicit choices.

    ``auto`` picks bf16 on CPUs with native bf16 and on CUDA GPUs that support it, fp16 on older CUDA GPUs, and fp32
    otherwise (emulated bf16 on an old CPU is slower than fp32).
    """
    device = torch.device(device)
    if precision not in ("auto", *_DTYPES):
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


class FastNetwork(nn.Module):
    """Wrap ``network`` so its forward runs under autocast with channels-last memory format.

    Args:
        network: the module to run (its parameters are shared, not copied: optimisers and checkpoints of
            ``network`` keep working); moved to ``device``.
        device: the device the network runs on; decides what ``"auto"`` means.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast dtype for the forward pass.
        channels_last: convert weights and inputs to channels-last (NHWC), which oneDNN and cuDNN run fastest (a
            config's switch: read with :func:`scripts.settings.is_on`).
        compile: run the training forward (and so its backward) through ``torch.compile``; the first call of each
            input shape compiles (tens of seconds on a CPU). Inference keeps the eager path with cached weights.

    Note: fp16 training needs loss scaling; on CUDA use the MONAI engines' ``amp=True`` (GradScaler) with
    ``precision="fp32"`` here, or bf16, which needs none.
    """

    def __init__(
        self,
        network: nn.Module,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        channels_last: bool | str = True,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        channels_last, compile = is_on(channels_last), is_on(compile)
        self.network = network.to(device)
        # kept out of the module tree: the compiled wrapper shares the network's parameters, not a second state dict
        object.__setattr__(self, "_train_network", torch.compile(network) if compile else network)
        self.device_type = torch.device(device).type
        self.precision = resolve_precision(precision, device)
        self.channels_last = channels_last
        if channels_last:
            network.to(memory_format=torch.channels_last)
        logger.info("network runs with %s autocast, channels_last=%s on %s", self.precision, channels_last, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, MetaTensor):
            # MetaTensor's bookkeeping at every layer (and, in training, at every step of the backward pass) costs a
            # tenth of a small batch's forward and a quarter of a training step (measured at 128x128, batch 4: 270
            # against 205 ms); run on the plain tensor. Inference outputs get the batch's meta data, as MONAI would;
            # training outputs stay plain: only the loss and the training metric see them.
            out = self.forward(x.as_tensor())
            return out if torch.is_grad_enabled() else convert_to_dst_type(out, dst=x)[0]
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self._train_network(x) if torch.is_grad_enabled() else self.network(x)
        with torch.autocast(self.device_type, dtype=_DTYPES[self.precision]):
            if torch.is_grad_enabled():
                out = self._train_network(x)
            else:  # inference: the weights autocast would cast at every call, cast once
                out = torch.func.functional_call(self.network, self._cast_weights(), (x,), strict=False)
        return out.float()

    def _cast_weights(self) -> dict[str, torch.Tensor]:
        """The weights and biases of the network's convolutions and linear layers in the autocast dtype, kept until
        any of them changes (a checkpoint loaded, an optimiser step).

        Autocast casts exactly these (the inputs of its lower-precision ops) at every forward call, which for this
        network's 18.6M parameters costs as much as the convolutions of a batch of one 128x128 image; the cast values
        are the same, so the outputs are identical to plain autocast.
        """
        weights = {
            f"{module_name}.{name}" if module_name else name: parameter
            for module_name, module in self.network.named_modules()
            if isinstance(module, _AUTOCAST_LAYERS)
            for name, parameter in module.named_parameters(recurse=False)
        }
        versions = tuple((p.data_ptr(), p._version, p.device) for p in weights.values())
        if getattr(self, "_cast_versions", None) != versions:
            dtype = _DTYPES[self.precision]
            self._cast = {name: p.detach().to(dtype) for name, p in weights.items()}
            self._cast_versions = versions
        return self._cast


_M_MMAP_THRESHOLD = -3  # mallopt parameter, <malloc.h>


def return_large_buffers_to_os(threshold: int = 16 << 20) -> bool:
    """Make glibc allocate buffers of ``threshold`` bytes and more with ``mmap`` (returned on free), in this process
    and in the processes it forks later (DataLoader workers). A no-op, returning ``False``, where the C library is not
    glibc.

    Args:
        threshold: size in bytes from which buffers are memory-mapped (default 16 MiB, about a 2000x2500 radiograph
            in float32: smaller buffers, allocated and freed for every image, are reused without the cost of fresh
            pages; measured on 240 images, a 1 MiB threshold spent 9.4 s of system time, 16 MiB 3.6 s).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        done = False
    if not done:
        logger.debug("mallopt(M_MMAP_THRESHOLD) not available: memory may creep up over long runs")
    return done


def freeze_startup_objects() -> None:
    """Move every object alive now (the modules of torch and MONAI, the parsed configs, the network) out of the
    garbage collector's view, with :func:`gc.freeze`, once a workflow is set up.

    They live until the process exits, yet each full collection walks all of them: several million objects, close to
    a second per collection, during the run and once more at exit (measured: ``python -c "import monai"`` spends 1.0 s
    exiting, 0.2 s with them frozen). Processes forked later (data loaders, writers) inherit the freeze, so their
    collections skip these objects too, and leave the pages they share with this process unwritten. Objects made
    afterwards are collected as usual.
    """
    gc.collect()  # what is garbage already goes first: frozen objects are never collected
    gc.freeze()


def cpu_share() -> int:
    """The CPU cores this process may use: the cores it is allowed to run on (its affinity, which container limits
    and ``taskset`` set), divided among the processes torchrun started on this machine (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def default_loader_workers() -> int:
    """DataLoader workers of a batch run: half of this process's cores, at least 2 (decoding is the longest stage)."""
    return max(2, cpu_share() // 2)


def default_write_processes() -> int:
    """Writer processes of a batch run: a quarter of this process's cores, at least 2."""
    return max(2, cpu_share() // 4)


def prepare_process(num_workers: int = 0, write_processes: int = 0) -> int:
    """Set up this process for a run: cuDNN's autotuner on (fixed input sizes), large buffers returned to the system
    (:func:`return_large_buffers_to_os`), and the network's thread pool sized to the cores that the DataLoader workers
    and writer processes leave (:func:`use_cpu_threads`). Returns the number of network threads."""
    torch.backends.cudnn.benchmark = True
    return_large_buffers_to_os()
    return use_cpu_threads(cpu_share() - int(num_workers) - int(write_processes))


def prepare_device(device: torch.device | str, cudnn_benchmark: bool | str = True) -> torch.device:
    """The first step of a training run: resolve its ``device`` (the multi-GPU configs' device joins the process
    group, which everything after it needs) and switch cuDNN's autotuner (a config's switch: it times the convolution
    algorithms for each new input shape and keeps the fastest; the inputs of a run have one or two fixed sizes)."""
    torch.backends.cudnn.benchmark = is_on(cudnn_benchmark)
    return torch.device(device)


def use_cpu_threads(threads: int) -> int:
    """Give PyTorch's intra-op thread pool ``threads`` threads (at least 1) and return that number."""
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    return threads
