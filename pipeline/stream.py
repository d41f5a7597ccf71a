"""``segment(src)``: the pipeline as a Python iterator, for code that wants the labels themselves (a
planner, a ROS node, a metric) rather than a video file::

    from pipeline import segment

    for frame in segment("drive.mp4"):          # a file, camera index, URL or image folder, as `segpipe run`,
                                                 # or your own frames: an iterable or a queue.Queue of
                                                 # (H, W, 3) uint8 RGB arrays
        frame.labels_full                        # (H, W) uint8 class ids at the source's resolution
        frame.output                             # the colourised frame (colourise.view), RGB
        frame.index, frame.seconds, frame.image

Decode, preprocess, inference and colourise run in their own threads, as in ``segpipe run``; the
caller's loop is the last stage. The queue in front of it holds ``queue_size`` frames and blocks, so a
slow loop slows a file down rather than losing frames (a live source drops its oldest frames, counted, as
it always does). A stage's failure, or a file that ends early, is raised from the loop after the frames
that came through; so is an exception from your own iterable, after the frames taken before it. Leaving
the loop (``break``, an exception) stops the pipeline once the generator is
released: at once for ``for frame in segment(...)``; a generator kept in a variable stops on its
``close()`` (or ``with contextlib.closing(segment(...)) as frames``), and at the latest when Python exits.
"""
from __future__ import annotations

import atexit
import queue
import threading
import weakref

from pipeline.queues import Stopped
from pipeline.stage import Stage
from train.errors import SegpipeError

_END = object()
POLL_S = 0.05
LEAVE_WAIT_S = 2.0      # leaving the loop waits this long at most for the pipeline to stop


class CallerLeft(SegpipeError):
    """The loop over ``segment()`` was left before the end: the pipeline stops."""


class Handoff(Stage):
    """The sink that hands finished frames to the caller's thread."""
    name = "caller"
    wants_labels = True

    def __init__(self, queue_size: int):
        super().__init__()
        self.frames: queue.Queue = queue.Queue(max(1, queue_size))
        self.left = threading.Event()

    def process(self, frame):
        self._put(frame, self.inbox.stop)
        return frame

    def take(self):
        """The next frame for the caller, waited for in short steps: Ctrl-C may reach any thread, and
        only a main thread that wakes up sees it at once."""
        while True:
            try:
                return self.frames.get(timeout=POLL_S)
            except queue.Empty:
                pass

    def end(self) -> None:
        """After the run, however it ended: the end marker, unless the caller has left."""
        try:
            self._put(_END)
        except CallerLeft:
            pass

    def _put(self, item, stop: threading.Event | None = None) -> None:
        """Wait for room in front of the caller, but not past the caller leaving or the pipeline stopping."""
        while not self.left.is_set():
            if stop is not None and stop.is_set():
                raise Stopped
            try:
                self.frames.put(item, timeout=POLL_S)
                return
            except queue.Full:
                pass
        raise CallerLeft("the caller left the loop")

    def stop_if_left(self, pipe) -> None:
        """Every tick of the run: a caller that left while this stage waits for a frame stops it too."""
        if self.left.is_set() and not pipe.stop_event.is_set():
            pipe.fail(self, CallerLeft("the caller left the loop"))


def segment(src, settings=None, *, backend=None, queue_size: int = 4):
    """Each frame of ``src``, segmented (see the module's docstring), from a generator. ``settings``: a
    ``load_settings(...)`` (e.g. ``load_settings(infer={"weights": "my.pt"})``) or the same overrides as a
    dict (``{"infer": {"weights": "my.pt"}}``); ``backend``: an
    ``engine.load(...)`` backend to share between calls. The generator returns the run's statistics."""
    frames = _segment(src, settings, backend, queue_size)
    _running.add(frames)
    return frames


_running: weakref.WeakSet = weakref.WeakSet()   # generators not yet closed: stopped at exit, so no stage
atexit.register(lambda: [frames.close() for frames in list(_running)])   # thread dies mid-call


def _segment(src, settings, backend, queue_size: int):
    from pipeline.run import run

    handoff = Handoff(queue_size)
    outcome: dict = {}

    def work():
        try:
            outcome["stats"] = run(src, None, settings, sinks=[handoff], backend=backend,
                                   monitor=handoff.stop_if_left)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            outcome["error"] = e
        finally:
            handoff.end()

    worker = threading.Thread(target=work, name="segpipe-segment", daemon=True)
    worker.start()
    finished = False
    try:
        while (frame := handoff.take()) is not _END:
            yield frame
        finished = True
    finally:
        if not finished:                 # the pipeline stops within a tick; a worker still opening the
            handoff.left.set()           # source or loading the model stops itself when it gets there
        worker.join(None if finished else LEAVE_WAIT_S)
    error = outcome.get("error")
    if error is not None:
        raise error
    return outcome["stats"]
