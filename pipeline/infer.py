"""Batched inference: up to ``batch`` frames per call, waiting at most ``max_wait_s`` for a batch to fill
(a live source is never held back; at end of stream a partial batch goes at once)."""
from __future__ import annotations

import torch

from pipeline.stage import Stage


class Infer(Stage):
    name = "infer"
    batched = True

    def __init__(self, backend, batch: int = 4, max_wait_ms: float = 5.0):
        super().__init__()
        self.backend = backend
        self.batch = max(1, min(int(batch), int(backend.max_batch)))
        self.max_wait_s = max_wait_ms / 1000.0
        self.nhwc = getattr(backend, "channels_last", False)   # the backend runs NHWC (PyTorch)

    def process(self, frames):
        if self.nhwc:                       # one copy, straight into NHWC (stacking CHW views, then converting: two)
            x = torch.stack([f.tensor.permute(1, 2, 0) for f in frames]).permute(0, 3, 1, 2)
        else:
            x = torch.stack([f.tensor for f in frames])        # (N, 3, h, w) uint8, contiguous
        labels = self.backend(x)
        for frame, lab in zip(frames, labels):
            frame.labels = lab
            frame.tensor = None
        return frames
