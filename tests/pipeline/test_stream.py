"""``segment()``: the pipeline as a Python iterator."""
import threading

import cv2
import numpy as np
import pytest
import torch

from pipehelp import ROAD, SKY, StubBackend, decode_index, frame_image, probe, write_clip
from pipeline import segment
from pipeline.stream import _END
from train.data import find_pairs, read_mask
from train.errors import InvalidInputError, PartialInputError, StageError
from train.metrics import ConfusionMatrix


def test_every_frame_comes_in_order_with_its_labels_at_the_source_size(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=20)
    stub = StubBackend(delay_s=0.01)
    frames = list(segment(clip, settings.override(infer={"batch": 3}), backend=stub, queue_size=2))
    src = probe(clip)
    assert [f.index for f in frames] == list(range(20))
    assert [f.seconds for f in frames] == src["seconds"]
    for i, f in enumerate(frames):
        assert f.image.shape == (64, 96, 3) and f.output.shape == (64, 96, 3)
        assert f.labels_full.dtype == np.uint8 and f.labels_full.shape == (64, 96)
        assert set(np.unique(f.labels_full)) <= {ROAD, SKY} and decode_index(f.labels_full) == i
    assert sum(stub.batches) == 20


def test_the_shipped_model_labels_real_carla_frames(carla_dir, settings):
    pairs = find_pairs(carla_dir)
    cm = ConfusionMatrix(23)
    seen = 0
    for frame, pair in zip(segment(carla_dir / "CameraRGB", settings), pairs, strict=True):
        cm.update(torch.from_numpy(frame.labels_full), torch.from_numpy(read_mask(pair.mask)))
        seen += 1
    assert seen == 12 and cm.pixel_accuracy() > 0.8


def test_leaving_the_loop_stops_the_pipeline(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=200)
    stub = StubBackend()
    for f in segment(clip, settings, backend=stub, queue_size=1):
        if f.index == 4:
            break
    assert not [t.name for t in threading.enumerate() if t.name.startswith("segpipe-")]
    assert sum(stub.batches) < 50                       # stopped, not run to the end


def test_a_generator_kept_in_a_variable_stops_on_close(tmp_path, settings):
    frames = segment(write_clip(tmp_path / "clip.mp4", frames=200), settings, backend=StubBackend())
    assert next(frames).index == 0
    frames.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("segpipe-")]


def test_a_failure_is_raised_from_the_loop_after_the_frames_before_it(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=30)
    got = []
    with pytest.raises(StageError, match="stub backend exploded"):
        for f in segment(clip, settings.override(infer={"batch": 1}), backend=StubBackend(fail_at=6)):
            got.append(f.index)
    assert got == list(range(len(got))) and len(got) <= 5


def test_a_cut_file_gives_what_decoded_then_says_so(tmp_path, settings):
    data = write_clip(tmp_path / "clip.mkv", frames=60).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 3])
    got = []
    with pytest.raises(PartialInputError, match="ended early"):
        for f in segment(cut, settings, backend=StubBackend()):
            got.append(f.index)
    assert 3 <= len(got) < 40 and got == list(range(len(got)))


def test_the_labels_agree_with_run_masks(tmp_path, settings):
    from pipeline.run import run
    clip = write_clip(tmp_path / "clip.mp4", frames=6)
    run(clip, None, settings, masks=tmp_path / "m", backend=StubBackend())
    for f in segment(clip, settings, backend=StubBackend()):
        png = cv2.imread(str(tmp_path / "m" / f"{f.index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(png, f.labels_full)


def test_the_hand_off_stops_with_the_pipeline_while_the_caller_is_slow():
    from pipeline.queues import BoundedQueue, Stopped
    from pipeline.stream import Handoff
    handoff = Handoff(queue_size=1)
    handoff.inbox = BoundedQueue("in", 2, "block", threading.Event())
    handoff.process("frame 0")                          # the caller has not taken it: the next one waits
    stopper = threading.Timer(0.2, handoff.inbox.stop.set)
    stopper.start()
    with pytest.raises(Stopped):
        handoff.process("frame 1")
    ender = threading.Thread(target=handoff.end)       # the end marker still reaches the caller
    ender.start()
    assert [handoff.frames.get(timeout=5), handoff.frames.get(timeout=5)] == ["frame 0", _END]
    ender.join(5)


@pytest.mark.parametrize("delivered_to", ["the process", "another thread"])
def test_ctrl_c_before_the_first_frame_does_not_wait_for_the_source(tmp_path, settings, delivered_to):
    """A pipe with no writer yet: Ctrl-C in the loop returns at once, not when the source gives up, even
    when the OS hands the signal to a thread other than the main one (it may pick any)."""
    import os
    import signal
    import time
    fifo = tmp_path / "feed.ts"
    os.mkfifo(fifo)
    frames = segment(fifo, settings.override(decode={"stall_timeout_s": 30}), backend=StubBackend())

    def ctrl_c():
        if delivered_to == "the process":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even when the
    threading.Timer(0.5, ctrl_c).start()                                # tests run in the background (SIG_IGN)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(frames)
        assert time.monotonic() - t0 < 10                # the source would have waited 30 s
    finally:
        signal.signal(signal.SIGINT, before)
        with open(fifo, "wb"):                           # a writer that closes: the source gives up
            pass
        time.sleep(0.5)


def test_your_own_frames_are_labelled_as_the_same_frames_from_files(carla_dir, settings):
    import engine
    backend = engine.load()                                          # the shipped model, loaded once
    folder = carla_dir / "CameraRGB"
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]
    before = [image.copy() for image in images]
    from_files = list(segment(folder, settings, backend=backend))
    produced = (image for image in images)                          # a producer without a length
    from_arrays = list(segment(produced, settings, backend=backend))
    assert [f.index for f in from_arrays] == list(range(12))
    assert [f.seconds for f in from_arrays] == [f.seconds for f in from_files]
    for mine, theirs, image, copy in zip(from_arrays, from_files, images, before, strict=True):
        assert mine.image is image and np.array_equal(image, copy)     # not copied, not changed
        assert np.array_equal(mine.labels_full, theirs.labels_full)
    stacked = list(segment(np.stack(images[:3]), settings, backend=backend))
    assert [np.array_equal(a.labels_full, b.labels_full) for a, b in zip(stacked, from_files)] == [True] * 3
    (one,) = segment(images[4], settings, backend=backend)           # one array: one frame
    assert np.array_equal(one.labels_full, from_files[4].labels_full)


def test_your_own_frames_into_a_video(tmp_path, settings):
    from pipeline.run import run
    frames = [frame_image(i, 96, 64) for i in range(8)]
    out = tmp_path / "seg.mp4"
    stats = run(iter(frames), out, settings, masks=tmp_path / "m", backend=StubBackend())
    assert probe(out)["frames"] == 8 and stats["audio"] == "none in the input"
    assert [decode_index(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in sorted((tmp_path / "m").iterdir())] \
        == list(range(8))


GREY = np.zeros((64, 96), np.uint8)
RGB = np.zeros((64, 96, 3), np.uint8)


@pytest.mark.parametrize("frames, message", [
    (iter([]), r"no frames: pass \(H, W, 3\) uint8 RGB arrays"),
    (GREY, r"a uint8 array of shape \(64, 96\) is not frames: pass one \(H, W, 3\) uint8 RGB array"),
    (iter([None, RGB]), r"frame 0 is None: .*cv2.imread gives None for a file it cannot read"),
    (["a.jpg", "b.jpg"], r"frame 0 is a str: .*one source per call: a path, folder or glob goes in alone"),
    ([torch.zeros(3, 64, 96, dtype=torch.uint8)], r"frame 0 is a Tensor: .*t.permute\(1, 2, 0\).cpu\(\).numpy\(\)"),
    (iter([RGB, RGB.astype(np.float32)]), r"frame 1 is a float32 array of shape \(64, 96, 3\): .*COLOR_BGR2RGB"),
    (iter([RGB, GREY]), r"frame 1 is a uint8 array of shape \(64, 96\)"),
    (iter([RGB] * 3 + [RGB[:48]]), r"frame 3 has shape \(48, 96, 3\) but the first had \(64, 96, 3\): pass frames "
                                   r"of one size"),
])
def test_frames_that_are_not_rgb_images_of_one_size_are_refused(settings, frames, message):
    with pytest.raises(InvalidInputError, match=message) as refused:
        for _ in segment(frames, settings, backend=StubBackend()):
            pass
    assert "written" not in str(refused.value)                      # segment() writes no files to speak of


# --- your own frames: failures after the frames before them, queues ----------------------------------------
def _frames(count):
    return [frame_image(i, 96, 64) for i in range(count)]


@pytest.mark.parametrize("failure, error", [(RuntimeError("camera unplugged"), RuntimeError),
                                            (RGB.astype(np.float32), InvalidInputError)])
def test_a_failure_of_your_iterable_comes_after_every_frame_taken_before_it(settings, failure, error):
    def producer():
        yield from _frames(30)
        if isinstance(failure, Exception):
            raise failure
        yield failure

    got = []
    with pytest.raises(error) as raised:
        for f in segment(producer(), settings.override(infer={"batch": 4}), backend=StubBackend(delay_s=0.005),
                         queue_size=1):
            got.append(decode_index(f.labels_full))
    assert got == list(range(30))                   # none of the frames in flight is lost
    assert error is RuntimeError and raised.value is failure or "frame 30 is a float32 array" in str(raised.value)


def test_a_queue_of_frames_until_none(settings):
    import queue
    frames_in = queue.Queue()
    for image in _frames(8):
        frames_in.put(image)
    frames_in.put(None)
    got = [decode_index(f.labels_full) for f in segment(frames_in, {"infer": {"torch_threads": 1}},
                                                        backend=StubBackend())]
    assert got == list(range(8))


def test_leaving_the_loop_over_a_queue_stops_at_once_and_takes_no_later_frame(settings):
    import queue
    import time
    frames_in = queue.Queue()
    for image in _frames(6):
        frames_in.put(image)
    for f in segment(frames_in, settings, backend=StubBackend(), queue_size=1):
        if f.index == 2:
            t0 = time.monotonic()
            break
    assert time.monotonic() - t0 < 1.0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("segpipe-")]
    frames_in.put(RGB)                              # the producer goes on: nothing of the old run takes it
    time.sleep(0.3)
    assert frames_in.qsize() == 1


@pytest.mark.parametrize("producer", ["an empty queue", "a queue that goes quiet", "a generator that waits"])
def test_your_frames_that_stop_coming_are_a_stalled_source(settings, producer):
    import queue
    import time
    from train.errors import SourceStalledError
    frames_in, release = queue.Queue(), threading.Event()
    if producer == "a queue that goes quiet":
        for image in _frames(3):
            frames_in.put(image)

    def waiting():
        release.wait(10)
        yield RGB

    src = waiting() if producer == "a generator that waits" else frames_in
    got, t0 = [], time.monotonic()
    try:
        with pytest.raises(SourceStalledError, match="no frame"):
            for f in segment(src, settings.override(decode={"stall_timeout_s": 0.5}), backend=StubBackend()):
                got.append(f.index)
    finally:
        release.set()                                # the generator's thread, given up on, may end
    assert time.monotonic() - t0 < 5 and got == ([0, 1, 2] if producer == "a queue that goes quiet" else [])


def test_things_that_are_not_sources_are_named(settings):
    from PIL import Image
    from pipeline.sources import open_source
    with pytest.raises(InvalidInputError, match=r"^Image is not a source: .*np.asarray\(image.convert\('RGB'\)\)"):
        next(segment(Image.new("RGB", (96, 64)), settings, backend=StubBackend()))
    with pytest.raises(InvalidInputError, match="^float is not a source"):
        open_source(1.5, settings)                  # the whole settings are taken, as their decode section
    from train.errors import InputNotFoundError
    with pytest.raises(InputNotFoundError, match="camera /dev/video7 does not exist"):
        open_source(np.int64(7), settings)          # a numpy integer is a camera index too
