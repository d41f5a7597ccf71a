"""The live source: a camera, stream or file as `segpipe live` sees it, and the decode stage that reads it.

``LiveSource`` wraps ``open_source`` (the first open fails fast, so a typo is an error, not a retry loop)
and yields ``(index, pts, time_base, rgb, t_capture)``:

- cameras and streams (``camera``/``url``): frames as they arrive, stamped when read. A connection that
  ends or breaks is reopened with exponential backoff (``Reconnect``); the HUD says
  "reconnecting (attempt 2/10)"; after the last attempt the source ends and ``error`` says why.
- files (and image folders): every frame as fast as the pipeline takes them, or with ``realtime`` paced
  at their native rate as if a camera filmed them: each frame is stamped with the moment it is due (so
  its latency includes any time the decoder was late; such frames are counted in ``late`` and the drop-
  oldest queue after decode keeps only the newest of a late burst). A decoder more than ``REANCHOR_S``
  behind restarts the clock, with a warning. ``loop`` starts the file again at its end. Pausing (space
  in the window) holds a file; a camera cannot be held, so there only the window freezes.

Live frames (streams, paced files) are re-stamped in milliseconds since the first frame (time base
1/1000), so a recording keeps the real timing across drops and reconnects.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction

import cv2

from pipeline.decode import Decode
from pipeline.frame import Frame, frame_ticks
from pipeline.hud import LiveState
from pipeline.sources import open_source
from train.errors import InvalidInputError, MediaError, SegpipeError

log = logging.getLogger("segpipe.live")

LIVE_TIME_BASE = Fraction(1, 1000)
PAUSE_POLL_S = 0.05
REANCHOR_S = 1.0         # a paced file this far behind its clock (a stalled decoder) restarts the clock


@dataclass(frozen=True)
class Reconnect:
    """How a dropped camera or stream is reopened: ``attempts`` tries, waiting ``backoff_s`` before the
    first and doubling up to ``backoff_max_s``. ``attempts=0``: a drop ends the demo."""
    attempts: int = 10
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    def __post_init__(self):
        if self.attempts < 0:
            raise InvalidInputError(f"--reconnect-attempts {self.attempts} must be >= 0 (0: never reconnect)")
        if self.backoff_s <= 0 or self.backoff_max_s < self.backoff_s:
            raise InvalidInputError(f"--reconnect-backoff {self.backoff_s} must be > 0 (and at most the "
                                    f"maximum wait, {self.backoff_max_s} s)")

    def delay(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))


class LiveSource:
    """``info`` + ``frames()`` + ``close()``, like the sources of ``open_source``; see the module docs."""

    def __init__(self, spec, decode_settings, *, realtime: bool = False, loop: bool = False,
                 reconnect: Reconnect = Reconnect(), state: LiveState | None = None, opener=open_source,
                 clock=time.perf_counter):
        self.spec, self.settings, self.opener, self.clock = spec, decode_settings, opener, clock
        self.reconnect = reconnect
        self.state = state if state is not None else LiveState()
        self.stop = threading.Event()          # build_pipeline hands in the pipeline's stop event
        self.end = threading.Event()           # capture ends at the next frame; those captured go on
        self.current = opener(spec, decode_settings)
        first = self.current.info
        self.stream = first.kind in ("camera", "url")       # a connection that can drop and come back
        self.paced = bool(realtime)
        self.latest = self.stream or self.paced             # latest-frame semantics: drop the oldest
        self.loop = bool(loop) and not self.stream
        self.info = replace(first, live=self.latest,
                            frames=None if (self.latest or self.loop) else first.frames,
                            time_base=LIVE_TIME_BASE if self.latest else first.time_base)
        self.late = 0              # paced frames the decoder delivered more than a frame interval late
        self.reconnects = 0
        self.waited_s = 0.0        # time spent waiting for a frame's moment or while paused (not work)
        self.error: MediaError | None = None
        self._skipped_before = 0   # undecodable frames of connections already closed
        self._damaged_before = 0   # and frames they decoded with errors

    @property
    def skipped(self) -> int:
        return self._skipped_before + (self.current.skipped if self.current is not None else 0)

    @property
    def damaged(self) -> int:
        return self._damaged_before + getattr(self.current, "damaged", 0)

    # --- frames -----------------------------------------------------------------------------------
    def frames(self):
        w, h = self.info.width, self.info.height
        interval = 1.0 / float(self.info.fps)
        index, origin, last_pts = 0, None, -1
        shift, next_pts = 0, None              # a looped file's timestamps go on from the pass before
        while self.current is not None:
            src = self.current
            inner = src.frames()
            pace = None                        # (clock at the first frame, its time in s), per connection
            first_of_pass = True
            try:
                for _, pts, tb, image in inner:
                    if self._ending():
                        return
                    if not self.paced:
                        self._hold_while_paused()
                        if self._ending():
                            return
                    now = self.clock()
                    t_capture = now
                    if self.paced:
                        t = float(pts * tb)
                        if pace is None:
                            pace = [now, t]
                        due = pace[0] + (t - pace[1])
                        due, now = self._wait_until(due, pace)
                        if self._ending():
                            return
                        if now - due > interval:        # the decoder is behind this frame's moment
                            self.late += 1
                            if now - due > REANCHOR_S:  # slower than real time: start the clock again
                                log.warning("%s: decoding is %.1f s behind real time; restarting the "
                                            "clock (the CPU is busy, or the file is too heavy to play live)",
                                            self.info.name, now - due)
                                pace[0] += now - due
                                due = now
                        t_capture = due
                    if image.shape[:2] != (h, w):       # a reconnected camera may come back at another size
                        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
                    if self.latest:
                        origin = t_capture if origin is None else origin
                        pts, tb = max(last_pts + 1, round((t_capture - origin) * 1000)), LIVE_TIME_BASE
                        last_pts = pts
                    elif self.loop:
                        if first_of_pass and next_pts is not None:
                            shift = next_pts - pts
                        pts += shift
                        next_pts = max(next_pts or 0, pts + frame_ticks(self.info.fps, tb))
                    first_of_pass = False
                    yield index, pts, tb, image, t_capture
                    index += 1
            finally:
                inner.close()
            self._skipped_before += src.skipped
            self._damaged_before += getattr(src, "damaged", 0)
            src.close()
            self.current = None
            if self._ending():
                return
            if self.stream:
                self.current = self._reopen(src.error or "the stream ended")
            elif src.error is not None:
                log.warning("%s ended early (%s)", self.info.name, src.error)
            elif self.loop:
                self.current = self.opener(self.spec, self.settings)

    def _ending(self) -> bool:
        return self.stop.is_set() or self.end.is_set()

    def _hold_while_paused(self) -> None:
        """A file waits while paused (a camera cannot; its frames pass and only the window freezes)."""
        if self.stream or not self.state.paused:
            return
        t = self.clock()
        while self.state.paused and not self._ending():
            self.stop.wait(PAUSE_POLL_S)
        self.waited_s += self.clock() - t

    def _wait_until(self, due: float, pace: list) -> tuple[float, float]:
        """Sleep until ``due`` (a pause shifts it, and the rest of the file, by its length)."""
        while True:
            if self.state.paused and not self.stream:
                t = self.clock()
                self._hold_while_paused()
                held = self.clock() - t
                due += held
                pace[0] += held
            now = self.clock()
            left = due - now
            if left <= 0 or self._ending():
                return due, now
            self.stop.wait(min(left, PAUSE_POLL_S))
            self.waited_s += self.clock() - now

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True (at once) when the capture ends meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._ending():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.stop.wait(min(left, PAUSE_POLL_S))
        return True

    def _reopen(self, why):
        """The connection dropped: reopen it with backoff; None (and ``error`` set) when it never comes back."""
        n, name = self.reconnect.attempts, self.info.name
        t0, last = self.clock(), why
        log.warning("%s: %s; reconnecting (%d attempts at most)", name, why, n)
        for attempt in range(1, n + 1):
            self.state.set_message(f"reconnecting (attempt {attempt}/{n})")
            if self._sleep(self.reconnect.delay(attempt)):
                return None
            try:
                src = self.opener(self.spec, self.settings)
            except (SegpipeError, OSError) as e:
                last = e
                log.info("%s: reconnect attempt %d/%d failed: %s", name, attempt, n, e)
                continue
            self.reconnects += 1
            self.state.set_message("")
            log.warning("%s: reconnected (attempt %d/%d)", name, attempt, n)
            return src
        self.state.set_message("source lost")
        how = (f"it did not come back after {n} attempts in {self.clock() - t0:.0f} s (last error: {last}); "
               f"check the camera or stream, or wait longer with --reconnect-attempts" if n else
               "reconnecting is off (--reconnect-attempts 0)")
        self.error = MediaError(f"lost {name} ({why}) and {how}")
        return None

    def close(self) -> None:
        if self.current is not None:
            self._skipped_before += self.current.skipped
            self._damaged_before += getattr(self.current, "damaged", 0)
            self.current.close()
            self.current = None


class LiveDecode(Decode):
    """Decode for a ``LiveSource``: each frame's latency starts at its capture time, and the source's
    waits (pacing, pause) are not counted as the stage's work."""
    name = "decode"

    def frame(self, index, pts, time_base, image, t_capture) -> Frame:
        return Frame(index, pts, time_base, image, t_capture)

    def call(self, fn, *args):
        waited = self.source.waited_s
        out = super().call(fn, *args)
        idle = self.source.waited_s - waited
        if idle > 0:
            self.busy_s -= idle
            if fn != self.finish and self.call_s:
                self.call_s[-1] -= idle
        return out
