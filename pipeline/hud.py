"""What the live views share: the numbers of the heads-up display and the controls the keys change.

``LiveState`` is written by the live source (reconnect status), the view sinks (one ``Tracker`` per view:
frames shown and their capture-to-view latency) and the keys (pause, view, alpha, quit); it is read by
the window's HUD, the browser's /stats and the final statistics. ``draw_hud`` paints the HUD lines on
a frame (bottom left; the class legend is at the top).
"""
from __future__ import annotations

import threading
import time
from collections import deque

import cv2
import numpy as np

from pipeline.settings import VIEWS
from pipeline.stage import Samples

ALPHA_STEP = 0.1
STALL_S = 1.0            # no frame for this long: the HUD says it is waiting


class Tracker:
    """Frames shown by one view and their capture-to-view latency: the most recent samples (for the
    final percentiles, bounded so a camera can run for days) and a rolling window (for the HUD)."""

    def __init__(self, name: str, window_s: float = 2.0, clock=time.perf_counter):
        self.name, self.window_s, self.clock = name, window_s, clock
        self.latency_s = Samples()
        self._recent: deque[tuple[float, float]] = deque()      # (shown at, latency)
        self._lock = threading.Lock()
        self.last_shown: float | None = None

    def record(self, t_capture: float, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        latency = now - t_capture
        with self._lock:
            self.latency_s.append(latency)
            self._recent.append((now, latency))
            self.last_shown = now
            self._trim(now)
        return latency

    @property
    def frames(self) -> int:
        return self.latency_s.count

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self.window_s:
            self._recent.popleft()

    def rolling(self, now: float | None = None) -> dict:
        """fps and latency (ms) over the last ``window_s``; seconds since the last frame."""
        now = self.clock() if now is None else now
        with self._lock:
            self._trim(now)
            recent = list(self._recent)
            last = self.last_shown
        out = {"fps": 0.0, "latency_ms": None, "latency_p95_ms": None,
               "since_last_s": None if last is None else round(now - last, 3)}
        if recent:
            lat = np.asarray([r[1] for r in recent]) * 1000.0
            span = now - recent[0][0]
            out["fps"] = round((len(recent) - 1) / span, 2) if len(recent) > 1 and span > 0 else 0.0
            out["latency_ms"] = round(float(np.median(lat)), 1)
            out["latency_p95_ms"] = round(float(np.percentile(lat, 95)), 1)
        return out


class LiveState:
    """Shared by the live source, the view sinks, the keys and the HTTP server (thread-safe)."""

    def __init__(self, view: str = "overlay", alpha: float = 0.5, clock=time.perf_counter):
        self.clock = clock
        self.view, self.alpha = view, float(alpha)
        self.paused = False
        self.message = ""                     # e.g. "reconnecting (attempt 2/10)"; "" when all is well
        self.quit = threading.Event()         # a key, a signal, the window's close button or --duration
        self.quit_reason: str | None = None
        self.colourise = None                 # the stage whose view/alpha the keys change
        self.drops = lambda: 0                # set by the live runner: queue drops + undecodable frames
        self.info: dict = {}                  # static facts for /stats: source, backend, device
        self.trackers: dict[str, Tracker] = {}
        self._lock = threading.Lock()

    def tracker(self, name: str) -> Tracker:
        with self._lock:
            return self.trackers.setdefault(name, Tracker(name, clock=self.clock))

    # --- controls (keys, signals) ---------------------------------------------------------------
    def request_quit(self, reason: str) -> None:
        with self._lock:
            if self.quit_reason is None:
                self.quit_reason = reason
        self.quit.set()

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        return self.paused

    def cycle_view(self) -> str:
        self.set_view(VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)] if self.view in VIEWS else VIEWS[0])
        return self.view

    def set_view(self, view: str) -> None:
        self.view = view
        if self.colourise is not None:
            self.colourise.view = view          # read by Colourise once per frame

    def change_alpha(self, delta: float) -> float:
        self.alpha = round(min(1.0, max(0.0, self.alpha + delta)), 2)
        if self.colourise is not None:
            self.colourise.alpha = self.alpha
        return self.alpha

    def set_message(self, text: str) -> None:
        self.message = text

    # --- reading ---------------------------------------------------------------------------------
    def snapshot(self, view: str | None = None) -> dict:
        """The HUD numbers for one view's tracker (its fps and latency), plus the shared ones."""
        now = self.clock()
        tracker = self.trackers.get(view) if view else None
        rolling = tracker.rolling(now) if tracker else Tracker("none").rolling(now)
        return {
            **rolling,
            "frames": tracker.frames if tracker else 0,
            "dropped": int(self.drops()),
            "status": self.status(rolling.get("since_last_s")),
            "paused": self.paused,
            "view": self.view,
            "alpha": self.alpha,
            **self.info,
        }

    def status(self, since_last_s: float | None) -> str:
        if self.message:
            return self.message
        if self.paused:
            return "paused"
        if since_last_s is None:          # the model's first call (or a build) may take a while
            return "no frame out yet"
        if since_last_s > STALL_S:
            return f"waiting for frames ({since_last_s:.0f} s)"
        return "live"


def hud_lines(snap: dict) -> list[str]:
    """Two or three short lines: rate and latency, drops, and the status when it is not plain 'live'."""
    lat = "-" if snap["latency_ms"] is None else f"{snap['latency_ms']:.0f} ms (p95 {snap['latency_p95_ms']:.0f})"
    lines = [f"{snap['fps']:.1f} fps  latency {lat}", f"dropped {snap['dropped']}  frames {snap['frames']}"]
    if snap["status"] != "live":
        lines.append(snap["status"])
    return lines


def draw_hud(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """The lines in white on a darkened panel at the bottom left of ``image`` (in place)."""
    if not lines:
        return image
    h, w = image.shape[:2]
    scale = max(0.4, min(1.0, h / 900))
    thick = 1
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0] for t in lines]
    row = max(s[1] for s in sizes) + int(10 * scale) + 4
    pw = min(w, max(s[0] for s in sizes) + 16)
    ph = min(h, row * len(lines) + 8)
    panel = image[h - ph:, :pw]
    panel >>= 1                                                   # darken, in place
    for k, text in enumerate(lines):
        y = h - ph + 4 + (k + 1) * row - int(6 * scale) - 2
        cv2.putText(image, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image
