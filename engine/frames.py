"""A few real CARLA frames shipped with the package, for parity gates and tests.

``data/carla_frames.npz`` holds 4 frames from different drives of /work/shared/carla
(``frames``: uint8 (4, 192, 256, 3) RGB, ``names``: their source files), resized with INTER_AREA.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

FRAMES_FILE = Path(__file__).parent / "data" / "carla_frames.npz"


@lru_cache(maxsize=1)
def _raw() -> np.ndarray:
    with np.load(FRAMES_FILE) as z:
        return z["frames"]


def sample_frames(size: tuple[int, int], n: int | None = None) -> torch.Tensor:
    """The shipped frames resized to ``size`` (H, W): uint8 (N, 3, H, W) RGB on the CPU.

    ``n`` larger than the number shipped repeats them (for filling a batch).
    """
    h, w = int(size[0]), int(size[1])
    raw = _raw()
    interp = cv2.INTER_AREA if h <= raw.shape[1] else cv2.INTER_LINEAR
    imgs = [cv2.resize(f, (w, h), interpolation=interp) for f in raw]
    if n is not None:
        imgs = [imgs[i % len(imgs)] for i in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def label_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of pixels where two label maps agree."""
    return (a == b).float().mean().item()
