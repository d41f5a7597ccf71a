"""Runs the stages of a pipeline, one thread each, and stops them all together.

Holoscan-style: ``Pipeline.run()`` starts every stage, waits, and re-raises in the caller the first
exception any stage raised. An exception in one stage (or Ctrl-C in the caller) sets the shared stop
event; every queue wait checks it, so all stages leave their loops within a poll interval and run
their ``teardown()`` (the encoder flushes and closes the file, so the output so far stays playable).
Every tick the runner asks each stage's ``watchdog()`` whether it is stuck (a stalled source): that is
a failure like any other, and the stuck stage's thread (blocked in a system call) is abandoned after
``STUCK_JOIN_S`` instead of ``JOIN_TIMEOUT_S``, so a stall ends the run promptly.
"""
from __future__ import annotations

import logging
import threading
import time

from pipeline.queues import BoundedQueue, Stopped
from pipeline.stage import Stage
from train.errors import SegpipeError, StageError

log = logging.getLogger("segpipe.pipeline")

JOIN_TIMEOUT_S = 10.0   # a stage stuck in a system call (a dead camera) is abandoned after this
STUCK_JOIN_S = 1.0      # ... or after this, when its watchdog already said it is stuck


class Pipeline:
    def __init__(self, name: str = "pipeline"):
        self.name = name
        self.stop_event = threading.Event()
        self.stages: list[Stage] = []
        self.queues: list[BoundedQueue] = []
        self.error: tuple[Stage, BaseException] | None = None
        self._threads: list[threading.Thread] = []
        self._finished: list[threading.Event] = []   # set by each stage's thread after its teardown
        self._stuck: set[str] = set()                # stages whose watchdog fired
        self._abandoned = False                      # join gave up on a stuck stage's thread
        self._lock = threading.Lock()

    # --- wiring ---------------------------------------------------------------------------------
    def add_flow(self, upstream: Stage, downstream: Stage, *, capacity: int, policy: str) -> BoundedQueue:
        """Connect ``upstream`` to ``downstream`` through a queue of ``capacity`` items with ``policy``."""
        if upstream.outbox is not None or downstream.inbox is not None:
            raise ValueError(f"{upstream.name} -> {downstream.name}: a stage has one input and one output")
        q = BoundedQueue(f"{upstream.name}->{downstream.name}", capacity, policy, self.stop_event)
        upstream.outbox = downstream.inbox = q
        for stage in (upstream, downstream):
            if stage not in self.stages:
                self.stages.append(stage)
        self.queues.append(q)
        return q

    def __getitem__(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}: the stages are {[s.name for s in self.stages]}")

    @property
    def sink(self) -> Stage:
        return self.stages[-1]

    @property
    def drops(self) -> int:
        return sum(q.drops for q in self.queues)

    # --- running --------------------------------------------------------------------------------
    def start(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        for stage in self.stages:
            finished = threading.Event()
            t = threading.Thread(target=self._work, args=(stage, finished), name=f"segpipe-{stage.name}",
                                 daemon=True)
            self._threads.append(t)
            self._finished.append(finished)
        for t in self._threads:
            t.start()

    def _work(self, stage: Stage, finished: threading.Event) -> None:
        try:
            stage.setup()
            stage.loop()
        except Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - every failure must reach the caller
            self.fail(stage, e)
        finally:
            try:
                stage.teardown()
            except BaseException as e:  # noqa: BLE001
                self.fail(stage, e)
            finally:
                finished.set()

    def fail(self, stage: Stage, error: BaseException) -> None:
        with self._lock:
            first = self.error is None
            if first:
                self.error = (stage, error)
        if first:           # raised to the caller, which says it
            log.debug("stage %s failed: %r; stopping the pipeline", stage.name, error)
        elif stage is not self.error[0]:    # another stage's failure is not raised: said here, not lost
            log.warning("%s also failed: %s", stage.name, error)
        else:               # the failed stage failing again as it closes (a broken pipe twice): no news
            log.debug("stage %s failed again: %r", stage.name, error)
        self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    # Waiting uses each stage's ``finished`` event, not Thread.join: in CPython < 3.13 a join
    # interrupted by Ctrl-C can mark a still-running thread as stopped (gh-90882).
    def done(self) -> bool:
        return all(f.is_set() for f in self._finished)

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        if self._abandoned:                      # joined before: the stuck ones were given their time
            return
        deadline = time.monotonic() + timeout
        stuck_deadline = time.monotonic() + min(timeout, STUCK_JOIN_S)
        for stage, f in zip(self.stages, self._finished):
            f.wait(max(0.0, (stuck_deadline if stage.name in self._stuck else deadline) - time.monotonic()))
        stuck = [t.name for t, f in zip(self._threads, self._finished) if not f.is_set()]
        if stuck:
            self._abandoned = True
            waited = min(timeout, STUCK_JOIN_S) if all(n.removeprefix("segpipe-") in self._stuck for n in stuck) \
                else timeout
            log.warning("%s did not stop within %.0f s (blocked in a system call?); abandoning %s",
                        ", ".join(stuck), waited, "them" if len(stuck) > 1 else "it")
        for t, f in zip(self._threads, self._finished):
            if f.is_set():
                t.join(1.0)          # only the interpreter's own bookkeeping is left

    def check_watchdogs(self) -> None:
        """Fail the pipeline for the first stage whose watchdog reports it stuck."""
        for stage in self.stages:
            if stage.name in self._stuck:
                continue
            error = stage.watchdog()
            if error is not None:
                self._stuck.add(stage.name)
                self.fail(stage, error)
                return

    def run(self, on_tick=None, tick_s: float = 0.1, wait=None) -> None:
        """Start, wait for the end of stream (calling ``on_tick()`` every ``tick_s``), re-raise failures.
        ``wait(tick_s)``: what the caller's thread does between ticks (a window's event pump), instead
        of sleeping.

        KeyboardInterrupt (or any exception) in the caller stops every stage, waits for them to close
        their outputs, and propagates.
        """
        self.start()
        wait = wait or self._finished[-1].wait
        try:
            while not self.done():
                wait(tick_s)
                self.check_watchdogs()
                if self.stop_event.is_set():       # a failure: give the others their poll interval
                    self.join()
                    break
                if on_tick is not None:
                    on_tick()
        except BaseException:
            self.stop()
            self.join()
            raise
        self.join()
        if self.error is not None:
            stage, error = self.error
            if isinstance(error, SegpipeError):
                raise error
            raise StageError(stage.name, error) from error
