"""Decode: frames from the source (PyAV for videos, URLs and cameras; OpenCV for images), stamped
with their index, pts and time base and the moment they left the decoder."""
from __future__ import annotations

import time

from pipeline.frame import Frame
from pipeline.queues import EOS
from pipeline.stage import Stage


class Decode(Stage):
    name = "decode"

    def __init__(self, source, max_frames: int | None = None):
        super().__init__()
        self.source = source
        self.max_frames = max_frames
        self.count = 0
        self._frames = None

    def setup(self) -> None:
        self._frames = self.source.frames()

    def process(self, item=None):
        if self.max_frames is not None and self.count >= self.max_frames:
            return EOS
        got = next(self._frames, None)
        if got is None:
            return EOS
        index, pts, time_base, image = got
        self.count += 1
        return Frame(index, pts, time_base, image, time.perf_counter())

    def teardown(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self.source.close()
