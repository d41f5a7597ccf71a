"""Record sink for `segpipe live`: the Encode stage, at a fixed size although the view can change.

The window's v key switches between overlay, mask (both the input's size) and side by side (twice as
wide); a video file keeps one size, the one the recording started with. A frame of another size is
scaled to fit and centred on black (letterboxed), so the recording shows what was on screen.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.encode import Encode


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit ``width`` x ``height`` (aspect kept), centred on black."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((height, width, 3), np.uint8)
    x, y = (width - nw) // 2, (height - nh) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


class Record(Encode):
    name = "record"
    flag = "--record"

    def process(self, frame):
        h, w = frame.output.shape[:2]
        if (w, h) != (self.width, self.height):
            frame.output = letterbox(frame.output, self.width, self.height)
        return super().process(frame)
