"""Run an exported model (TorchScript from ``ckpt_export``, ONNX from ``onnx_export``) in place of the network.

``configs/inference_exported.json`` puts :func:`load_exported_network` in place of the eager ``network`` of
``inference.json``; the MONAI engine, inferer, pre- and post-processing stay exactly the same, so the masks differ
from the eager ones only by the exported graph's floating-point rounding.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxRuntimeNetwork", "load_exported_network"]

logger = logging.getLogger(__name__)


class OnnxRuntimeNetwork(nn.Module):
    """An ``nn.Module`` that runs an ONNX model with ONNX Runtime, so MONAI engines and inferers can call it.

    Args:
        path: the ``.onnx`` file (one float32 input ``(B, 1, H, W)``, one output, as ``onnx_export`` writes it).
        device: where inputs come from and outputs go to; CUDA devices use ONNX Runtime's CUDA provider when the
            installed ONNX Runtime has it (``onnxruntime-gpu``), the CPU provider otherwise.
        providers: explicit ONNX Runtime execution providers, overriding the choice above.

    Raises:
        ImportError: ONNX Runtime is not installed, with how to install it.
    """

    def __init__(self, path: str, device: torch.device | str = "cpu", providers: list[str] | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError(
                f"running {path} needs ONNX Runtime: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA), or use "
                "the TorchScript export (model.ts) instead."
            ) from e
        device = torch.device(device)
        if providers is None:
            available = onnxruntime.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda" and "CUDAExecutionProvider" in available:
                providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        self.path = path
        self.session = onnxruntime.InferenceSession(path, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        logger.info("running %s with ONNX Runtime (%s)", path, ", ".join(self.session.get_providers()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (pred,) = self.session.run(None, {self.input_name: image})[:1]
        return torch.from_numpy(pred).to(x.device)


def load_exported_network(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """Load an exported model for inference: ``.onnx`` with ONNX Runtime, anything else as TorchScript.

    Args:
        path: ``models/model.ts`` (``ckpt_export``), ``models/model.onnx`` (``onnx_export``) or a TensorRT
            TorchScript from ``trt_export`` (GPU, needs ``torch_tensorrt``).
        device: the device the engine runs on.

    Raises:
        FileNotFoundError: ``path`` does not exist, with the export command that makes it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"exported model {path} not found; export it first, e.g. `python -m monai.bundle ckpt_export network_def "
            "--filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json "
            "--config_file configs/inference.json` (see the bundle card for ONNX)."
        )
    if path.lower().endswith(".onnx"):
        return OnnxRuntimeNetwork(path, device)
    try:  # a trt_export model holds TensorRT engines: its ops are registered by importing torch_tensorrt
        import torch_tensorrt  # noqa: F401
    except ImportError:
        pass
    return torch.jit.load(path, map_location=device).eval()
