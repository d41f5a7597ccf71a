"""The live source: pacing a file like a camera, every frame without --realtime, reconnecting with backoff."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest

from pipeline.hud import LiveState
from pipeline.live_source import LIVE_TIME_BASE, LiveSource, Reconnect
from pipeline.settings import DecodeSettings
from train.errors import InvalidInputError, MediaError


def test_realtime_file_is_paced_and_stamped_with_its_capture_time(clip):
    src = LiveSource(clip, DecodeSettings(), realtime=True)
    assert src.latest and src.info.live and src.info.time_base == LIVE_TIME_BASE and src.info.frames is None
    t0 = time.perf_counter()
    got = list(src.frames())
    wall = time.perf_counter() - t0
    src.close()
    assert len(got) == 20
    captured = np.array([g[4] for g in got])
    assert 0.85 <= wall <= 1.6                               # 20 frames at 20 fps: 0.95 s
    assert np.allclose(np.diff(captured), 0.05, atol=1e-6)   # due times, exactly a frame apart
    pts = [g[1] for g in got]
    assert pts == [round(50 * i) for i in range(20)]         # milliseconds since the first frame
    assert src.late == 0


def test_file_without_realtime_plays_every_frame_with_its_own_timing(clip):
    src = LiveSource(clip, DecodeSettings())
    assert not src.latest and not src.info.live and src.info.frames == 20
    t0 = time.perf_counter()
    got = list(src.frames())
    assert time.perf_counter() - t0 < 0.8                     # not paced
    assert [g[0] for g in got] == list(range(20))
    assert got[1][2] == src.info.time_base != LIVE_TIME_BASE  # the file's own pts and time base


def test_loop_starts_the_file_again(clip):
    src = LiveSource(clip, DecodeSettings(), loop=True)
    frames = src.frames()
    got = [next(frames) for _ in range(45)]
    frames.close()
    src.close()
    assert [g[0] for g in got] == list(range(45))
    pts = [g[1] for g in got]                        # each pass goes on from the last: no jump back
    step = pts[1] - pts[0]
    assert step > 0 and pts == [pts[0] + i * step for i in range(45)]


@pytest.mark.parametrize("realtime", [False, True])
def test_end_stops_a_paused_file_at_once(clip, realtime):
    """A quit while paused ends the capture then, not after the drain's time limit."""
    state = LiveState()
    src = LiveSource(clip, DecodeSettings(), realtime=realtime, state=state)
    frames = src.frames()
    next(frames)
    state.toggle_pause()
    threading.Timer(0.2, src.end.set).start()
    t0 = time.perf_counter()
    assert list(frames) == [] and time.perf_counter() - t0 < 1.0
    src.close()


def test_end_stops_the_capture_at_the_next_frame(clip):
    src = LiveSource(clip, DecodeSettings(), loop=True)
    frames = src.frames()
    got = [next(frames) for _ in range(3)]
    src.end.set()
    assert list(frames) == [] and len(got) == 3
    src.close()


def test_pause_holds_a_file_and_shifts_its_clock(clip):
    state = LiveState()
    src = LiveSource(clip, DecodeSettings(), realtime=True, state=state)
    frames = src.frames()
    first = next(frames)
    state.paused = True
    threading.Timer(0.4, lambda: setattr(state, "paused", False)).start()
    second = next(frames)
    frames.close()
    src.close()
    assert second[4] - first[4] >= 0.4                       # held, and due after the pause
    assert src.waited_s >= 0.35 and src.late == 0


# --- reconnecting, with a scripted opener -------------------------------------------------------------
@dataclass(frozen=True)
class Info:
    kind: str = "url"
    name: str = "tcp://camera"
    width: int = 32
    height: int = 24
    fps: Fraction = Fraction(100)
    time_base: Fraction = Fraction(1, 100)
    frames: int | None = None
    live: bool = True


class FakeStream:
    def __init__(self, n, error=None, size=(24, 32)):
        self.n, self.error_at_end, self.size = n, error, size
        self.info, self.skipped, self.error, self.closed = Info(), 0, None, False

    def frames(self):
        for i in range(self.n):
            time.sleep(0.002)
            yield i, i, Fraction(1, 100), np.full((*self.size, 3), i, np.uint8)
        self.error = self.error_at_end

    def close(self):
        self.closed = True


class Opener:
    """Returns the scripted results in turn: a FakeStream, or an exception to raise."""

    def __init__(self, *script):
        self.script, self.calls = list(script), 0

    def __call__(self, spec, settings):
        self.calls += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_a_dropped_stream_is_reopened_with_backoff_and_the_hud_says_so():
    state = LiveState()
    messages = []
    state.set_message = lambda text: (messages.append(text), setattr(state, "message", text))
    refused = MediaError("cannot open tcp://camera: Connection refused")
    second = FakeStream(4, size=(48, 64))            # came back at another size: resized to the first
    opener = Opener(FakeStream(5, error="connection reset"), refused, refused, second, refused, refused, refused)
    src = LiveSource("tcp://camera", DecodeSettings(), state=state, opener=opener,
                     reconnect=Reconnect(attempts=3, backoff_s=0.02, backoff_max_s=0.05))
    t0 = time.perf_counter()
    got = list(src.frames())
    assert [g[0] for g in got] == list(range(9))                     # numbering goes on
    assert all(g[3].shape == (24, 32, 3) for g in got)
    pts = [g[1] for g in got]
    assert pts == sorted(set(pts))                                   # strictly rising across the gap
    assert src.reconnects == 1
    assert messages[:4] == ["reconnecting (attempt 1/3)", "reconnecting (attempt 2/3)",
                            "reconnecting (attempt 3/3)", ""]
    assert time.perf_counter() - t0 >= 0.02 + 0.04 + 0.05           # 0.02, 0.04, then capped at 0.05
    # the second connection ended too, and never came back: the source ends and says why
    assert opener.calls == 7
    assert isinstance(src.error, MediaError) and "did not come back after 3 attempts" in str(src.error)
    assert state.message == "source lost"


def test_reconnect_attempts_zero_ends_at_the_first_drop():
    src = LiveSource("tcp://camera", DecodeSettings(), opener=Opener(FakeStream(3)),
                     reconnect=Reconnect(attempts=0))
    assert len(list(src.frames())) == 3
    assert "reconnecting is off" in str(src.error)


def test_the_first_open_fails_fast():
    opener = Opener(MediaError("cannot open tcp://camera: Connection refused"))
    with pytest.raises(MediaError, match="Connection refused"):
        LiveSource("tcp://camera", DecodeSettings(), opener=opener)
    assert opener.calls == 1


@pytest.mark.parametrize("event", ["stop", "end"])
def test_a_stop_interrupts_the_backoff(event):
    src = LiveSource("tcp://camera", DecodeSettings(), opener=Opener(FakeStream(1), FakeStream(1)),
                     reconnect=Reconnect(attempts=5, backoff_s=30, backoff_max_s=30))
    threading.Timer(0.2, getattr(src, event).set).start()
    t0 = time.perf_counter()
    assert len(list(src.frames())) == 1
    assert time.perf_counter() - t0 < 2 and src.error is None


@pytest.mark.parametrize("kwargs", [{"attempts": -1}, {"backoff_s": 0}, {"backoff_s": 10, "backoff_max_s": 5}])
def test_reconnect_settings_are_checked(kwargs):
    with pytest.raises(InvalidInputError):
        Reconnect(**kwargs)
