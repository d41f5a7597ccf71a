"""The whole inference graph as one module: uint8 RGB in, uint8 class ids out.

Every backend runs (a compiled form of) ``FusedSegmenter``, so normalisation and argmax
happen inside the compiled region and logits never leave it. An unpadded ("valid") U-Net gets its
input mirrored at the border, as in the paper's overlap-tile scheme, so its labels cover the whole frame.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from train.model import border_margin


class FusedSegmenter(nn.Module):
    """``uint8 (N, 3, H, W)`` RGB -> ``uint8 (N, H, W)`` class ids.

    Normalisation runs in float32 (exact for any weight dtype) and is then cast to the
    weights' dtype, so an FP16 module only sees values of order 1. A valid U-Net's normalised input is
    reflect-padded by its border margin (``margin``, 92 pixels a side at depth 4; H and W must exceed it),
    so the labels are the frame's own size.
    """

    def __init__(self, model: nn.Module, normalize: dict):
        super().__init__()
        self.model = model
        mean = torch.tensor(normalize["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(normalize["std"], dtype=torch.float32).view(1, 3, 1, 1)
        # x / 255 then (x - mean) / std  ==  x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        config = getattr(model, "config", None)
        self.margin = border_margin(config) if config is not None else 0

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() * self.scale.float() + self.shift.float()
        if self.margin:  # same padding adds no op: its graph (and ONNX cache entries) stay as they were
            x = F.pad(x, (self.margin,) * 4, mode="reflect")
        return self.model(x.to(self.model.head.weight.dtype))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        labels = self.logits(frames).argmax(1)
        if torch.onnx.is_in_onnx_export():   # TensorRT documents casts to uint8 from floats only (ids < 256: exact)
            labels = labels.float()
        return labels.to(torch.uint8)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with each Conv2d -> BatchNorm2d pair folded into the conv.

    Saves one memory pass per conv on CPU and eager CUDA; numerically the same up to float rounding.
    """
    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return model


def fused_segmenter(model: nn.Module, normalize: dict, *, fold_bn: bool = True) -> FusedSegmenter:
    net = fold_batch_norm(model) if fold_bn else copy.deepcopy(model).eval()
    return FusedSegmenter(net, normalize).eval()
