"""The stage base class: a stage does its work in one ``process()``; this class owns the loop around it.

A stage (Holoscan's operator) has at most one input queue and one output queue, set by
``Pipeline.add_flow``. Its thread runs::

    setup()
    loop: item(s) = inbox.get()  ->  out = process(item)  ->  outbox.put(each of out)
    at end of stream: outbox.put(each of finish()), then EOS
    teardown()                      # always, also after an error or a stop

- A source stage (no inbox) has ``process()`` called with no argument until it returns ``EOS``.
- A batched stage (``batched = True``) receives a list of up to ``self.batch`` items, collected
  for at most ``self.max_wait_s`` after the first arrives.
- ``process()`` returns one item, a list of items, or None (nothing to pass on).
- The last stage of a pipeline is its sink: each item it returns counts as delivered (frames out,
  latency). A sink that delivers later (an encoder muxing packets) returns None and calls
  ``self.deliver(frame.t_decoded)`` itself.

Adding a sink is one file: subclass ``Stage``, set ``name``, write ``process(frame)`` (and ``setup`` /
``teardown`` for what it opens), and pass it to ``build_pipeline(..., sinks=[...])``.
"""
from __future__ import annotations

import time
from array import array

import numpy as np

from pipeline.queues import EOS, BoundedQueue

STATS_WINDOW = 50_000    # timing samples kept per stage (the most recent): memory stays flat on long runs


class Samples:
    """The most recent ``size`` timings (seconds), oldest first, in at most ``8 * size`` bytes: a list's
    ``append``, ``len``, ``[i]`` (and ``[-1] -= x``) and ``np.asarray``, without growing forever on a
    camera that runs for days. ``count`` is how many were ever added."""

    def __init__(self, size: int = STATS_WINDOW):
        self.size, self.count = int(size), 0
        self._buf = array("d")
        self._start = 0                      # index of the oldest sample once the buffer is full

    def append(self, value: float) -> None:
        if len(self._buf) < self.size:
            self._buf.append(value)
        else:
            self._buf[self._start] = value
            self._start = (self._start + 1) % self.size
        self.count += 1

    def __len__(self) -> int:
        return len(self._buf)

    def _at(self, i: int) -> int:
        n = len(self._buf)
        if not -n <= i < n:
            raise IndexError("sample index out of range")
        return (self._start + i % n) % n

    def __getitem__(self, i: int) -> float:
        return self._buf[self._at(i)]

    def __setitem__(self, i: int, value: float) -> None:
        self._buf[self._at(i)] = value

    def __iter__(self):
        return iter(np.asarray(self).tolist())

    def __array__(self, dtype=None, copy=None):
        ordered = np.roll(np.frombuffer(self._buf, dtype=np.float64), -self._start) if len(self._buf) \
            else np.zeros(0)
        return ordered.astype(dtype) if dtype is not None else ordered


class Stage:
    name = "stage"
    batched = False
    wants_labels = False    # an output that reads ``frame.labels_full`` (colourise then keeps them)

    def __init__(self):
        self.inbox: BoundedQueue | None = None
        self.outbox: BoundedQueue | None = None
        self.batch = 1
        self.max_wait_s = 0.0
        self.busy_s = 0.0               # time spent in process() and finish()
        self.paced_s = 0.0              # of the last call, the time it waited for a frame's due time
        self.call_s = Samples()         # duration of each process() call (the most recent STATS_WINDOW)
        self.delivered = 0              # items out of the pipeline (sinks only)
        self.latency_s = Samples()      # decoder out -> delivered, per frame (the most recent STATS_WINDOW)

    # --- what a stage writes -------------------------------------------------------------------
    def setup(self) -> None:
        """Open what the stage needs (runs in the stage's thread, before the first process())."""

    def process(self, item=None):
        raise NotImplementedError

    def finish(self):
        """End of stream: return what the stage still holds (e.g. an encoder's flushed frames), or None."""
        return None

    def teardown(self) -> None:
        """Release everything; called once, after the last process(), also after an error or a stop."""

    def watchdog(self) -> BaseException | None:
        """Called by the runner from its own thread every tick: an error if the stage is stuck (e.g. a
        source that gives no frame for too long), which stops the pipeline; None while all is well."""
        return None

    # --- helpers for sinks ----------------------------------------------------------------------
    def deliver(self, t_decoded: float) -> None:
        """Count one frame out of the pipeline; its latency runs from ``t_decoded`` to now."""
        self.latency_s.append(time.perf_counter() - t_decoded)
        self.delivered += 1

    # --- the loop (called by Pipeline in the stage's thread) ------------------------------------
    def call(self, fn, *args):
        t = time.perf_counter()
        self.paced_s = 0.0                      # set by a stage that waits for a frame's time (Publish)
        out = fn(*args)
        dt = time.perf_counter() - t - self.paced_s     # waiting is not work: not in busy_s nor call_s
        self.busy_s += dt
        if fn != self.finish:                   # bound methods: equal, never identical
            self.call_s.append(dt)
        return out

    def loop(self) -> None:
        if self.inbox is None:                       # a source
            while (out := self.call(self.process)) is not EOS:
                self.emit(out)
        else:
            while True:
                if self.batched:
                    items = self.inbox.get_batch(self.batch, self.max_wait_s)
                    end = items[-1] is EOS
                    if end:
                        items.pop()
                    if items:
                        self.emit(self.call(self.process, items))
                else:
                    item = self.inbox.get()
                    end = item is EOS
                    if not end:
                        self.emit(self.call(self.process, item))
                if end:
                    break
        self.emit(self.call(self.finish))
        if self.outbox is not None:
            self.outbox.put(EOS)

    def emit(self, out) -> None:
        if out is None:
            return
        for item in out if isinstance(out, list) else (out,):
            if self.outbox is not None:
                self.outbox.put(item)
            else:
                self.deliver(item.t_decoded)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
