"""Decode: frames from the source (PyAV for videos, URLs and cameras; OpenCV for images), stamped
with their index, pts and time base and the moment they left the decoder.

A source that stops giving frames (a network drive that hangs, a pipe whose writer went quiet, a camera
that froze) is a stall, not a hang: after ``stall_timeout_s`` without a frame the stage's ``watchdog``
reports it, the runner stops the pipeline, and what was done is closed properly.
"""
from __future__ import annotations

import time

from pipeline.frame import Frame, frame_ticks
from pipeline.queues import EOS
from pipeline.stage import Stage
from train.errors import SourceStalledError


class Decode(Stage):
    name = "decode"

    def __init__(self, source, max_frames: int | None = None, stall_timeout_s: float | None = None):
        super().__init__()
        self.source = source
        self.max_frames = max_frames
        self.stall_timeout_s = stall_timeout_s or None
        self.count = 0
        self._frames = None
        self._waiting_since: float | None = None     # set while waiting on the source for a frame
        self._last_pts: int | None = None

    def setup(self) -> None:
        self._frames = self.source.frames()

    def process(self, item=None):
        if self.max_frames is not None and self.count >= self.max_frames:
            return EOS
        self._waiting_since = time.monotonic()
        try:
            got = next(self._frames, None)
        finally:
            self._waiting_since = None
        if got is None:
            return EOS
        self.count += 1
        index, pts, time_base, *rest = got
        if pts is None:      # a caller's own source may leave it out: the next slot after the last frame
            info = self.source.info
            pts = 0 if self._last_pts is None else self._last_pts + frame_ticks(info.fps, info.time_base)
        self._last_pts = pts
        return self.frame(index, pts, time_base or self.source.info.time_base, *rest)

    def frame(self, index, pts, time_base, image) -> Frame:
        """A frame's latency starts as it leaves the decoder."""
        return Frame(index, pts, time_base, image, time.perf_counter())

    def watchdog(self):
        since = self._waiting_since
        if self.stall_timeout_s is None or since is None:
            return None
        waited = time.monotonic() - since
        if waited < self.stall_timeout_s:
            return None
        return SourceStalledError(f"no frame from {self.source.info.name} for {waited:.0f} s after "
                                  f"{self.count} frames: the source stalled (a hung network drive, a pipe or "
                                  f"stream that went quiet, a frozen camera?); if it is only slow, raise "
                                  f"decode.stall_timeout_s (now {self.stall_timeout_s:g} s, 0 turns it off)")

    def teardown(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self.source.close()
