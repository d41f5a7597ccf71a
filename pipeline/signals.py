"""SIGINT and SIGTERM, in one place: while a run is in progress (main thread only: Python delivers
signals there), the caller's handler decides what they do; the previous handlers come back after."""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger("segpipe.pipeline")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SigTerm(BaseException):
    """SIGTERM, raised in the main thread (a BaseException, so no ``except Exception`` swallows it)."""


@contextmanager
def signals_handled(handler, signals=STOP_SIGNALS):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def signals_raise():
    """The first SIGTERM raises SigTerm, the first SIGINT KeyboardInterrupt, so the pipeline stops and
    closes its output; signals that come while it winds down (a second Ctrl-C) are ignored, so the
    output is always finalised (the wind-down is bounded: stages stop within a poll interval, a stuck
    one is abandoned after runner.JOIN_TIMEOUT_S)."""
    fired = []

    def handler(signum, frame):
        if fired:
            log.warning("%s: already stopping; finishing the output", signal.Signals(signum).name)
            return
        fired.append(signum)
        raise SigTerm if signum == signal.SIGTERM else KeyboardInterrupt

    return signals_handled(handler)


def sigterm_raises():
    """SIGTERM raises SigTerm (SIGINT keeps its KeyboardInterrupt)."""
    def handler(signum, frame):
        raise SigTerm

    return signals_handled(handler, (signal.SIGTERM,))
