"""Encode: PyAV's own loop, ``stream.encode(frame)`` then ``mux``, and a final ``stream.encode()`` to flush.

H.264 (libx264, yuv420p) by default. Each frame keeps its source pts and time base, so the output has
the input's timing and frame rate. Sizes a chroma-subsampled format cannot hold (odd width or height
for yuv420p) are padded by one row/column (edge replicated). ``teardown`` flushes and closes even after
an error or a stop, so whatever was written stays playable.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2

from pipeline.stage import Stage
from train.errors import InvalidInputError, MediaError

log = logging.getLogger("segpipe.pipeline")


def even_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """The nearest size >= (width, height) that ``pix_fmt`` can hold (chroma subsampling needs even sides)."""
    comps = av.VideoFormat(pix_fmt, 101, 101).components
    w2 = any(c.width not in (0, 101) for c in comps)
    h2 = any(c.height not in (0, 101) for c in comps)
    return width + (width % 2 if w2 else 0), height + (height % 2 if h2 else 0)


class Encode(Stage):
    name = "encode"

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction, time_base: Fraction, *,
                 codec: str = "libx264", pix_fmt: str = "yuv420p", preset: str | None = None,
                 tune: str | None = None, crf: int | None = None, threads: int = 0, options: dict | None = None):
        super().__init__()
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps, self.time_base = Fraction(fps), Fraction(time_base)
        self.codec, self.pix_fmt, self.threads = codec, pix_fmt, int(threads)
        self.options = {k: str(v) for k, v in (("preset", preset), ("tune", tune), ("crf", crf)) if v is not None}
        self.options.update({str(k): str(v) for k, v in (options or {}).items()})
        try:
            self.size = even_size(self.width, self.height, pix_fmt)
        except (ValueError, av.FFmpegError):
            raise InvalidInputError(f"unknown pixel format {pix_fmt!r}: use e.g. yuv420p") from None
        self.container = self.stream = None
        self._pending: dict[int, float] = {}     # pts -> t_decoded of frames inside the encoder
        self._last_pts = None
        self._flushed = False

    def setup(self) -> None:
        try:
            self.container = av.open(str(self.path), "w")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"cannot write {self.path}: {e} (does the folder exist, and does the extension "
                             f"name a container, e.g. .mp4 or .mkv?)") from None
        try:
            stream = self.container.add_stream(self.codec, rate=self.fps)
        except (av.FFmpegError, ValueError) as e:
            raise InvalidInputError(f"cannot encode with {self.codec!r} ({e}): use e.g. --codec libx264, "
                                    f"libx265, libvpx-vp9 or mpeg4") from None
        stream.width, stream.height = self.size
        stream.pix_fmt = self.pix_fmt
        stream.time_base = self.time_base
        stream.codec_context.time_base = self.time_base
        stream.codec_context.thread_count = self.threads
        if stream.codec_context.name in ("libx264", "libx265"):
            stream.options = self.options
        else:   # preset/tune/crf mean nothing to other encoders; only pass the extra options
            stream.options = {k: v for k, v in self.options.items() if k not in ("preset", "tune", "crf")}
        self.stream = stream

    def process(self, frame):
        image = frame.output
        h, w = image.shape[:2]
        if (w, h) != self.size:
            if w > self.size[0] or h > self.size[1]:
                raise MediaError(f"frame {frame.index} is {w}x{h} but the output is {self.size[0]}x{self.size[1]}")
            image = cv2.copyMakeBorder(image, 0, self.size[1] - h, 0, self.size[0] - w, cv2.BORDER_REPLICATE)
        if self.pix_fmt == "yuv420p":     # OpenCV's SIMD RGB->I420 (BT.601, limited range, as swscale's
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        else:                             # default) is several times cheaper than the encoder's conversion
            vf = av.VideoFrame.from_ndarray(image, format="rgb24")
        pts = frame.pts
        if self._last_pts is not None and pts <= self._last_pts:   # the encoder needs rising pts
            pts = self._last_pts + 1
        self._last_pts = pts
        vf.pts, vf.time_base = pts, frame.time_base
        self._pending[pts] = frame.t_decoded
        self._mux(self.stream.encode(vf))
        return None

    def _mux(self, packets) -> None:
        for packet in packets:
            pts = packet.pts                  # in the encoder's time base; mux rescales the packet
            self.container.mux(packet)
            t = self._pending.pop(pts, None)
            if t is not None:
                self.deliver(t)

    def finish(self):
        self._flushed = True
        self._mux(self.stream.encode())      # flush: the frames still inside the encoder
        return None

    def teardown(self) -> None:
        if self.container is None:
            return
        try:
            if not self._flushed and self.stream is not None:
                self._flushed = True
                try:
                    self._mux(self.stream.encode())
                except av.FFmpegError as e:    # keep what was written; the original error matters more
                    log.debug("encoder flush after a stop failed: %s", e)
        finally:
            self.container.close()
