"""VGG16 fully convolutional network (FCN) for 2D lung-field segmentation.

The design follows the ``FCN_v2`` tutorial network (kimbgAI/Segmentation2D): torchvision's VGG16 ``features`` tapped
after each of its 5 max-pools, a 5-stage transposed-convolution decoder with additive skips from pools 4..1, and a
1x1 classifier. With 2 classes it has 18,643,746 parameters, exactly as the tutorial.

Two things are added so that the network is safe to use on real radiographs:

* ImageNet normalisation lives inside the network (a fixed buffer), so every caller (training, inference, MONAI
  Label, exported TorchScript/ONNX) feeds the same thing: intensities scaled to [0, 1]. Grey (1-channel) inputs are
  repeated to VGG's 3 channels before the normalisation, which is exactly "grey copied to 3 channels".
* Inputs of any height and width: the image is zero-padded (after normalisation, i.e. with the ImageNet mean) up to
  a multiple of 32 and the logits are cropped back, so the output always has the input's spatial size.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional
from torchvision.models import VGG16_Weights, vgg16
from torchvision.models._utils import IntermediateLayerGetter

__all__ = ["VGG16FCN", "load_vgg16_features", "wants_pretrained_weights"]

# indices of the five MaxPool2d layers in torchvision's vgg16().features
_POOL_LAYERS = {"4": "pool1", "9": "pool2", "16": "pool3", "23": "pool4", "30": "pool5"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DecoderStage(nn.Sequential):
    """One decoder stage of the tutorial: ``ConvTranspose2d(k=3, s=2, p=1, output_padding=1) -> ReLU -> BatchNorm``.

    It doubles the spatial size exactly.

    Args:
        in_channels: channels of the incoming feature map.
        out_channels: channels after the stage.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                deconv=nn.ConvTranspose2d(
                    in_channels, out_channels, kernel_size=3, stride=2, padding=1, dilation=1, output_padding=1
                ),
                relu=nn.ReLU(inplace=True),
                bn=nn.BatchNorm2d(out_channels),
            )
        )


class VGG16FCN(nn.Module):
    """FCN with a VGG16 encoder, additive skips from the pool outputs and a 1x1 classifier.

    Args:
        out_channels: number of output classes (logits), 2 for background / lung.
        in_channels: 1 for grey radiographs (repeated to 3 inside) or 3; both are accepted at run time.
        pretrained: ``None``/``"none"``/``False`` for random initialisation, ``"imagenet"`` (or ``True``) for
            torchvision's ImageNet VGG16 weights (torch hub cache, downloaded if allowed), or the path of a local
            VGG16 state dict / checkpoint (see :func:`load_vgg16_features`).
        allow_download: whether ``pretrained="imagenet"`` may download the weights when they are not in the torch
            hub cache. When ``False`` (or the download fails) a clear error explains how to pass a local file.
        pad_multiple: inputs are padded to a multiple of this (the encoder's total stride, 32).
        initialise: ``False`` for a network whose weights are loaded right after (inference): it is built on
            PyTorch's meta device, so torchvision's whole VGG16 (138M parameters, 1.5 s of random values) is never
            made, and only the kept layers get PyTorch's default initialisation (0.1 s): a normal, finite network
            that tools such as the model zoo's TorchScript check can run as it is. Needs ``pretrained`` none.

    Inputs are ``(B, 1 or 3, H, W)`` float tensors with intensities in [0, 1]; outputs are ``(B, out_channels, H, W)``
    logits.
    """

    def __init__(
        self,
        out_channels: int = 2,
        in_channels: int = 1,
        pretrained: str | bool | None = None,
        allow_download: bool = True,
        pad_multiple: int = 32,
        initialise: bool = True,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}.")
        if not initialise and wants_pretrained_weights(pretrained):
            raise ValueError("initialise=False builds a network without weights: it cannot load pretrained ones.")
        self.in_channels = in_channels
        self.pad_multiple = pad_multiple
        with contextlib.nullcontext() if initialise else torch.device("meta"):
            features = load_vgg16_features(pretrained, allow_download=allow_download)
            self.backbone = IntermediateLayerGetter(features, return_layers=_POOL_LAYERS)
            self.stage1 = DecoderStage(512, 512)
            self.stage2 = DecoderStage(512, 256)
            self.stage3 = DecoderStage(256, 128)
            self.stage4 = DecoderStage(128, 64)
            self.stage5 = DecoderStage(64, 32)
            self.classifier = nn.Conv2d(32, out_channels, kernel_size=1)
        if not initialise:
            self.to_empty(device="cpu")
            for module in self.modules():  # to_empty leaves whatever the memory held
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat grey to 3 channels and apply the ImageNet mean/std the VGG weights were trained with."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"expected 1 or 3 input channels, got {x.shape[1]}.")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        x = self.normalise(x)
        pad_h = (self.pad_multiple - height % self.pad_multiple) % self.pad_multiple
        pad_w = (self.pad_multiple - width % self.pad_multiple) % self.pad_multiple
        # pad bottom/right only, so that cropping back is a plain slice; always called (a no-op for zero padding) so
        # that traced exports (ONNX) keep the padding for every input size
        x = functional.pad(x, [0, pad_w, 0, pad_h])
        pools = self.backbone(x)
        y = self.stage1(pools["pool5"]) + pools["pool4"]
        y = self.stage2(y) + pools["pool3"]
        y = self.stage3(y) + pools["pool2"]
        y = self.stage4(y) + pools["pool1"]
        y = self.classifier(self.stage5(y))
        return y[..., :height, :width]


def load_vgg16_features(pretrained: str | bool | None = None, allow_download: bool = True) -> nn.Sequential:
    """Build torchvision's VGG16 ``features`` and load the requested weights into it.

    Args:
        pretrained: ``None``/``False``/``"none"``/``""``: random initialisation. ``True``/``"imagenet"``: torchvision's
            ``VGG16_Weights.IMAGENET1K_V1``. Any other string: path of a local file holding a torchvision VGG16 state
            dict (``features.N.*`` keys, as in ``vgg16-397923af.pth``), a ``features``-only state dict (``N.*``), or a
            checkpoint dict wrapping one of those under ``"state_dict"`` or ``"model"``.
        allow_download: allow torchvision to download the ImageNet weights into the torch hub cache.

    Raises:
        FileNotFoundError: a local path that does not exist.
        RuntimeError: ImageNet weights asked for but neither cached nor downloadable; or a file without VGG16 weights.
    """
    features = vgg16(weights=None).features
    if not wants_pretrained_weights(pretrained):
        return features
    if pretrained is True or str(pretrained).lower() in ("imagenet", "true", "imagenet1k_v1", "default"):
        state = _imagenet_state_dict(allow_download)
    else:
        path = os.path.expanduser(str(pretrained))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained VGG16 weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    features.load_state_dict(_features_state_dict(state, source=str(pretrained)))
    return features


def wants_pretrained_weights(pretrained: str | bool | None) -> bool:
    """Whether ``pretrained`` (see :func:`load_vgg16_features`) asks for weights rather than random values."""
    return not (pretrained is None or pretrained is False or str(pretrained).lower() in ("", "none", "false", "random"))


def _imagenet_state_dict(allow_download: bool) -> dict:
    weights = VGG16_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    how_to = (
        f"Either copy the file {os.path.basename(weights.url)} (from {weights.url}) to {cached}, or pass its path: "
        "--network_def#pretrained /path/to/vgg16-397923af.pth (or use --network_def#pretrained none to train from "
        "scratch)."
    )
    if os.path.isfile(cached):
        return torch.load(cached, map_location="cpu", weights_only=True)
    if not allow_download:
        raise RuntimeError(
            f"ImageNet VGG16 weights are not in the torch hub cache ({cached}) and downloads are off. " + how_to
        )
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, socket timeouts, proxies: all mean "offline" to the user
        raise RuntimeError(
            f"ImageNet VGG16 weights could not be downloaded ({type(e).__name__}: {e}). " + how_to
        ) from e


def _features_state_dict(state: dict, source: str) -> dict:
    """Extract the ``features`` part of a VGG16 state dict in any of the accepted layouts."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    for prefix in ("features.", "backbone.", ""):
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :][:1].isdigit()}
        if sub:
            return sub
    raise RuntimeError(f"{source} holds no VGG16 'features' weights (expected keys like 'features.0.weight').")
