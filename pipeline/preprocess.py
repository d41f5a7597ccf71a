"""Preprocess: resize each frame to the model's input size as uint8 CHW on the backend's device.

CPU: cv2.resize (``preprocess.interpolation``: INTER_AREA or INTER_LINEAR) then a CHW view; the
inference stage's stack makes the one copy, in the layout its backend runs (NHWC for PyTorch).
GPU: the full-resolution uint8 frame is uploaded once (kept for the colouriser's overlay) and resized
there by ``resize``, which follows cv2 (within about one grey level). Normalisation is inside the backend.
"""
from __future__ import annotations

import functools

import cv2
import torch

from pipeline.stage import Stage

CV2_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR}


class Preprocess(Stage):
    name = "preprocess"

    def __init__(self, size: tuple[int, int], device: torch.device, interpolation: str = "area"):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.device = torch.device(device)
        self.interpolation = interpolation

    def process(self, frame):
        h, w = self.size
        if self.device.type == "cpu":
            small = frame.image
            if small.shape[:2] != (h, w):
                small = cv2.resize(small, (w, h), interpolation=CV2_INTERP[self.interpolation])
            frame.tensor = torch.from_numpy(small).permute(2, 0, 1)
            return frame
        image = torch.from_numpy(frame.image).to(self.device, non_blocking=True)   # the one upload
        frame.image_dev = image
        frame.tensor = resize(image.permute(2, 0, 1).unsqueeze(0), (h, w), self.interpolation)[0]
        return frame


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "area") -> torch.Tensor:
    """uint8 NCHW resized on its device as cv2.resize does it (which made the training inputs): one weight
    matrix a side, so the result is cv2's up to rounding (torch's own area mode pools whole pixels)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    rows = _weights(x.shape[-2], size[0], interpolation, x.device)
    cols = _weights(x.shape[-1], size[1], interpolation, x.device)
    return (rows @ x.float() @ cols.T).round_().clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=32)
def _weights(n_in: int, n_out: int, interpolation: str, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) resampling weights of one axis, as cv2 computes them."""
    scale = n_in / n_out
    out = torch.arange(n_out, dtype=torch.float64)[:, None]
    src = torch.arange(n_in, dtype=torch.float64)[None]
    if interpolation == "area" and n_out <= n_in:       # shrinking: each input pixel by its overlap
        overlap = torch.minimum((out + 1) * scale, src + 1) - torch.maximum(out * scale, src)
        return (overlap.clamp_(min=0) / scale).float().to(device)
    if interpolation == "area":                         # enlarging: blends only across pixel borders
        left = torch.floor(out * scale)
        frac = (out + 1) - (left + 1) / scale
        frac = torch.where(frac <= 0, 0.0, frac - torch.floor(frac))
    else:                                               # INTER_LINEAR, pixel centres aligned
        pos = (out + 0.5) * scale - 0.5
        left = torch.floor(pos)
        frac = pos - left
        frac = torch.where(left < 0, 0.0, frac)
        left = left.clamp(min=0)
    frac = torch.where(left >= n_in - 1, 0.0, frac)
    left = left.clamp(max=n_in - 1)
    weights = (1 - frac) * (src == left) + frac * (src == left + 1)
    return weights.float().to(device)
