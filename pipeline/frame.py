"""The one item that flows through the pipeline: a decoded frame and what the stages add to it."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


def frame_ticks(fps, time_base) -> int:
    """One frame's duration in ``time_base`` units (at least 1): where the next frame's pts goes."""
    return max(1, round(1 / (Fraction(fps) * Fraction(time_base))))


@dataclass(eq=False, slots=True)
class Frame:
    index: int                  # position in the source (undecodable frames keep their number)
    pts: int | None             # presentation timestamp in ``time_base`` units; every source here gives one (a
                                # decoded frame without one gets the last + 1/fps); a caller's own may not
    time_base: Fraction
    image: np.ndarray           # (H, W, 3) uint8 RGB at the source's resolution, on the host
    t_decoded: float            # time.perf_counter() when it left the decoder (latency starts here)
    image_dev: torch.Tensor | None = None    # (H, W, 3) uint8 on the backend's GPU (GPU path only)
    tensor: torch.Tensor | None = None       # (3, h, w) uint8 model input on the backend's device
    labels: torch.Tensor | None = None       # (h', w') uint8 class ids on the backend's device
    labels_full: np.ndarray | None = None    # (H, W) uint8 class ids at the source's resolution (--masks)
    output: np.ndarray | None = None         # (H2, W2, 3) uint8 RGB finished frame for the sinks

    @property
    def seconds(self) -> float | None:
        """The presentation time in seconds."""
        return None if self.pts is None else float(self.pts * self.time_base)
