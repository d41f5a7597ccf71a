"""Preprocess: resize each frame to the model's input size as uint8 CHW on the backend's device.

CPU: cv2.resize (``preprocess.interpolation``: INTER_AREA or INTER_LINEAR) then a CHW view; the
inference stage's stack makes the one copy, in the layout its backend runs (NHWC for PyTorch).
GPU: the full-resolution uint8 frame is uploaded once (kept for the colouriser's overlay) and resized
there with torch interpolate (area or bilinear, as on the CPU). Normalisation is inside the backend.
"""
from __future__ import annotations

import cv2
import torch
import torch.nn.functional as F

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
        x = image.permute(2, 0, 1).unsqueeze(0)
        if tuple(x.shape[-2:]) != (h, w):
            x = x.half()
            if self.interpolation == "area":
                x = F.interpolate(x, size=(h, w), mode="area")
            else:
                x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        frame.tensor = x[0]
        return frame
