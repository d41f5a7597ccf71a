"""Display sink: the live frames in an OpenCV window, with the class legend and a HUD; keys steer the demo.

Keys: q or Esc quit, space pause, v cycle the view (overlay, mask, side by side), + / - change the
overlay's opacity. Closing the window also quits. The frame is passed on unchanged (the HUD is drawn
on the window's copy), so a recording or the browser view gets the overlay and legend without it.

All window calls happen in the thread that calls ``pump()``, the main thread (macOS's Cocoa allows no
other): the stage's own thread hands each frame over and waits until it is taken, so a slow window holds
the pipeline back like any other stage. While no frame comes (paused, reconnecting, a stalled camera)
the pump keeps answering keys and redraws the HUD, so "paused" and "reconnecting (attempt 2/10)" show.
The window itself is behind a small interface (``OpenCVWindow``), so tests drive the sink with a fake one.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

import cv2

from pipeline.hud import ALPHA_STEP, LiveState, draw_hud, hud_lines
from pipeline.queues import Stopped
from pipeline.stage import Stage
from train.errors import MediaError

KEYS_HELP = "keys: q/Esc quit, space pause, v view, +/- opacity"
NO_GUI = ("--show needs OpenCV with a GUI and this one (opencv-python-headless) has none: "
          "pip uninstall -y opencv-python-headless && pip install opencv-python, "
          "or watch in a browser with --serve")


def gui_problem() -> str | None:
    """Why a window cannot open here (None when it can); checked before anything starts."""
    build = cv2.getBuildInformation()
    gui = next((line.split(":", 1)[1].strip() for line in build.splitlines() if line.strip().startswith("GUI:")), "")
    if gui.upper() == "NONE":
        return NO_GUI
    display = os.environ.get("DISPLAY")
    if sys.platform.startswith("linux") and not (display or os.environ.get("WAYLAND_DISPLAY")):
        return ("--show needs a desktop and $DISPLAY is not set here: run it in a desktop session, "
                "or watch in a browser with --serve 127.0.0.1:8080")
    if display and not x_server_answers(display):     # Qt would abort the process, with no way to catch it
        return (f"--show cannot reach the display {display} (no X server answers there: a closed ssh -X "
                f"session?): run it in a desktop session, or watch in a browser with --serve 127.0.0.1:8080")
    return None


def x_server_answers(display: str) -> bool:
    """Whether an X server listens at ``display`` (``:0``, ``unix:1``, ``host:10.0``); True when unsure."""
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit() or host.startswith("/"):          # macOS launchd sockets and the like
        return True
    try:
        if host not in ("", "unix"):                          # host:N is TCP port 6000 + N (ssh -X: localhost:10)
            socket.create_connection((host, 6000 + int(number)), timeout=2).close()
            return True
        for path in (f"/tmp/.X11-unix/X{number}", f"\0/tmp/.X11-unix/X{number}"):   # the file, or Linux's abstract one
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                if s.connect_ex(path) == 0:
                    return True
    except (OSError, UnicodeError):
        pass
    return False


class OpenCVWindow:
    """The few HighGUI calls the display makes."""

    def __init__(self, title: str):
        self.title = title
        self._seen = False

    def open(self) -> None:
        # pip's opencv-python bundles Qt without fonts: Qt would warn about them on every redraw
        os.environ.setdefault("QT_LOGGING_RULES", "default.warning=false")
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        except cv2.error as e:   # no GUI backend after all, or it could not connect to the display
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise MediaError(f"cannot open a window ({detail}); {NO_GUI.split(': ', 1)[1]}") from None

    def show(self, bgr) -> None:
        cv2.imshow(self.title, bgr)

    def poll(self, ms: int) -> int:
        return cv2.waitKey(ms)

    def closed(self) -> bool:
        """The user closed the window (some backends report visibility only once it has been shown)."""
        try:
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return self._seen
        self._seen |= visible
        return self._seen and not visible

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


class Display(Stage):
    name = "display"
    IDLE_POLL_S = 0.02       # without frames: answer keys this often
    REDRAW_S = 0.25          # and redraw the HUD this often
    HANDOFF_POLL_S = 0.05    # the stage's thread checks for a stop this often while a frame waits

    def __init__(self, state: LiveState, window=None, title: str = "segpipe live", hud: bool = True):
        super().__init__()
        self.state, self.hud = state, hud
        self.window = window if window is not None else OpenCVWindow(title)
        self.tracker = state.tracker(self.name)
        self.paused_frames = 0          # frames that passed while the window was frozen
        self._shown = None              # the RGB frame on screen, without the HUD
        self._drawn_at = 0.0
        self._pending = None            # the frame handed to the pump, not yet taken
        self._handoff = threading.Condition()

    def process(self, frame):
        if self.state.paused and self._shown is not None:
            self.paused_frames += 1
            return frame
        with self._handoff:
            self._pending = frame
            self._handoff.notify_all()
            while self._pending is not None:
                if self.inbox.stop.is_set():
                    raise Stopped
                self._handoff.wait(self.HANDOFF_POLL_S)
        return frame

    # --- the window, in the pump's thread -------------------------------------------------------
    def open(self) -> None:
        self.window.open()

    def pump(self, timeout: float) -> None:
        """Show the frame handed over (waiting up to ``timeout`` for one), answer keys, and redraw the
        HUD now and then. Call it from the main thread, in a loop (``Pipeline.run(wait=...)``)."""
        with self._handoff:
            if self._pending is None:
                self._handoff.wait(min(timeout, self.IDLE_POLL_S))
            frame, self._pending = self._pending, None
            self._handoff.notify_all()
        if frame is not None:
            self._shown = frame.output
            self._draw()
            self._poll(1)              # HighGUI paints in waitKey: the frame is on screen after it
            self.tracker.record(frame.t_decoded)
            return
        self._poll(1)
        if self._shown is not None and time.perf_counter() - self._drawn_at > self.REDRAW_S:
            self._draw()

    def close(self) -> None:
        self.window.close()

    def _draw(self) -> None:
        bgr = cv2.cvtColor(self._shown, cv2.COLOR_RGB2BGR)
        if self.hud:
            draw_hud(bgr, hud_lines(self.state.snapshot(self.name)))
        self.window.show(bgr)
        self._drawn_at = time.perf_counter()

    def _poll(self, ms: int) -> None:
        key = self.window.poll(ms)
        if key is not None and key >= 0 and self.handle_key(key & 0xFF) and self._shown is not None:
            self._draw()               # show the change (paused, the new opacity) at once
        if self.window.closed():
            self.state.request_quit("window closed")

    def handle_key(self, key: int) -> bool:
        """Apply one key; True when it changed something on screen."""
        s = self.state
        if key in (ord("q"), ord("Q"), 27):
            s.request_quit("key")
        elif key == ord(" "):
            s.toggle_pause()
        elif key in (ord("v"), ord("V")):
            s.cycle_view()
        elif key in (ord("+"), ord("=")):
            s.change_alpha(+ALPHA_STEP)
        elif key in (ord("-"), ord("_")):
            s.change_alpha(-ALPHA_STEP)
        else:
            return False
        return True
