"""The window sink without a window: a fake one records what is shown and plays scripted keys."""
from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from livehelp import FakeWindow, probe
from pipeline.display import NO_GUI, Display, gui_problem
from pipeline.frame import Frame
from pipeline.hud import LiveState, draw_hud
from pipeline.live import LiveSettings, run_live
from pipeline.queues import BoundedQueue


def frame(i=0, h=240, w=320):
    img = np.full((h, w, 3), 200, np.uint8)
    f = Frame(i, i, None, img, time.perf_counter() - 0.05)
    f.output = img.copy()
    return f


@pytest.fixture
def display():
    state = LiveState()
    state.colourise = SimpleNamespace(view="overlay", alpha=0.5)
    d = Display(state, window=FakeWindow())
    d.inbox = BoundedQueue("in", 2, "block", threading.Event())
    d.open()
    return d


def show(display, f):
    """One frame through the stage (in its own thread, as in a pipeline) and the pump (in this one)."""
    out = []
    stage = threading.Thread(target=lambda: out.append(display.process(f)))
    stage.start()
    display.pump(0.01)
    while stage.is_alive():
        display.pump(0.01)
    stage.join()
    return out[0]


def test_headless_opencv_is_one_clear_line():
    if "NONE" not in [l.split(":", 1)[1].strip() for l in cv2.getBuildInformation().splitlines()
                      if l.strip().startswith("GUI:")]:
        pytest.skip("this OpenCV has a GUI")
    problem = gui_problem()
    assert problem == NO_GUI and "\n" not in problem
    assert "pip install opencv-python" in problem and "--serve" in problem


def test_no_display_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:                           GTK3\n")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert "$DISPLAY is not set" in gui_problem() and "--serve" in gui_problem()
    with socket.socket() as x_server:               # host:N is an X server on TCP port 6000 + N
        x_server.bind(("127.0.0.1", 0))
        x_server.listen()
        display = f"127.0.0.1:{x_server.getsockname()[1] - 6000}.0"
        monkeypatch.setenv("DISPLAY", display)
        assert gui_problem() is None
    problem = gui_problem()                          # gone (a closed ssh -X session): Qt would abort
    assert f"cannot reach the display {display}" in problem and "--serve" in problem and "\n" not in problem


def test_show_without_a_gui_fails_before_loading_anything(clip, capsys, monkeypatch):
    from pipeline import cli
    monkeypatch.setattr("pipeline.display.gui_problem", lambda: NO_GUI)
    monkeypatch.setattr("pipeline.run.load_backend", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    assert cli.main(["live", str(clip), "--show"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install opencv-python" in err and "--serve" in err


def test_a_frame_is_shown_with_the_hud_and_passed_on_untouched(display):
    f = frame()
    before = f.output.copy()
    assert show(display, f) is f
    assert np.array_equal(f.output, before)                    # the HUD is on the window's copy only
    shown = display.window.shown[-1]
    plain = cv2.cvtColor(before, cv2.COLOR_RGB2BGR)
    h, w = shown.shape[:2]
    assert not np.array_equal(shown[h // 2:, : w // 2], plain[h // 2:, : w // 2])     # HUD bottom left
    assert np.array_equal(shown[: h // 4, w // 2:], plain[: h // 4, w // 2:])          # rest untouched
    assert display.tracker.frames == 1 and 0.04 < display.tracker.latency_s[0] < 1.0


def test_keys(display):
    s, win = display.state, display.window
    for key, check in [(ord("v"), lambda: s.view == "mask" == s.colourise.view),
                       (ord("v"), lambda: s.view == "side-by-side"),
                       (ord("v"), lambda: s.view == "overlay"),
                       (ord("+"), lambda: s.alpha == 0.6 == s.colourise.alpha),
                       (ord("-"), lambda: s.alpha == 0.5),
                       (ord(" "), lambda: s.paused),
                       (ord(" "), lambda: not s.paused),
                       (ord("x"), lambda: not s.quit.is_set())]:
        win.next_key = key
        show(display, frame())
        assert check(), chr(key)
    for _ in range(12):
        s.change_alpha(+0.1)
    assert s.alpha == 1.0                                        # clamped
    win.next_key = 27                                # Esc
    show(display, frame())
    assert s.quit.is_set() and s.quit_reason == "key"


def test_pause_freezes_the_window_but_frames_pass(display):
    show(display, frame(0))
    display.state.paused = True
    shown = len(display.window.shown)
    out = display.process(frame(1))                  # passes on without waiting for the window
    assert out is not None and display.paused_frames == 1 and len(display.window.shown) == shown
    assert display.tracker.frames == 1


def test_closing_the_window_quits(display):
    display.window.close_after = 1
    show(display, frame())
    assert display.state.quit_reason == "window closed"


def test_a_stop_frees_a_frame_the_window_never_took(display):
    from pipeline.queues import Stopped
    stage = threading.Thread(target=lambda: pytest.raises(Stopped, display.process, frame()))
    stage.start()
    time.sleep(0.1)                                  # no pump: the frame waits for the window
    assert stage.is_alive()
    display.inbox.stop.set()
    stage.join(1.0)
    assert not stage.is_alive()


def test_without_frames_the_window_still_answers_keys(display):
    show(display, frame())
    display.window.next_key = ord(" ")
    display.pump(0.01)
    assert display.state.paused


def test_hud_is_drawn_bottom_left_only():
    img = np.full((120, 200, 3), 128, np.uint8)
    draw_hud(img, ["20.0 fps  latency 40 ms (p95 55)", "dropped 3  frames 100"])
    changed = np.argwhere((img != 128).any(axis=2))
    assert len(changed) and changed[:, 0].min() > 40 and changed[:, 1].max() < 200


def test_a_quit_counts_the_frames_it_leaves_on_the_way(tmp_path, clip, settings):
    """q stops at once; the frames already decoded but not yet out are dropped, counted and said."""
    from mediakit import StubBackend

    stats = run_live(clip, settings, LiveSettings(), show=True, record=tmp_path / "rec.mp4",
                     backend=StubBackend(delay_s=0.05), window=FakeWindow(keys={2: ord("q")}))
    assert stats["live"]["exit"] == "key" and stats["dropped_by"]["stopped"] > 0
    recorded = stats["live"]["views"]["record"]["frames"]
    assert stats["live"]["captured"] == recorded + stats["dropped_by"]["queues"] + stats["dropped_by"]["stopped"]
    assert stats["dropped"] == sum(stats["dropped_by"].values())


def test_live_with_a_window_keys_change_the_view_and_q_quits(tmp_path, clip, stub, settings):
    """The whole live path with the fake window: v twice (mask, then side by side), then q."""
    win = FakeWindow(keys={3: ord("v"), 6: ord("v"), 9: ord("q")})
    rec, stats_path = tmp_path / "rec.mp4", tmp_path / "live.json"
    stats = run_live(clip, settings, LiveSettings(realtime=True), show=True, record=rec, stats_path=stats_path,
                     backend=stub, window=win)
    assert win.opened and win.destroyed
    assert win.threads == {threading.main_thread().name}      # macOS's Cocoa allows no other thread
    assert stats["live"]["exit"] == "key" and stats["live"]["view"] == "display"
    assert 5 <= stats["frames"] < 20                            # idle redraws count as images shown
    widths = [img.shape[1] for img in win.shown]
    assert widths[0] == 96 and widths[-1] == 192                # overlay ... side by side
    got = probe(rec)                                            # letterboxed into the size it started with
    assert (got["width"], got["height"]) == (96, 64) and got["frames"] >= 5
    assert got["pts"] == sorted(set(got["pts"]))
    assert stub.batches and set(stub.batches) == {1}            # live infers one frame at a time
    assert stats_path.exists()


def test_before_the_first_frame_the_status_line_has_no_none_in_it():
    from pipeline.hud import hud_lines
    state = LiveState()
    state.colourise = SimpleNamespace(view="overlay", alpha=0.5)
    state.drops = lambda: 116                        # a slow first model call: the camera's frames drop
    lines = hud_lines(state.snapshot("overlay"))
    assert lines == ["0.0 fps  latency -", "dropped 116  frames 0", "no frame out yet"]
