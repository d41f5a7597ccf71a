"""``segment()``: the pipeline as a Python iterator."""
import threading

import cv2
import numpy as np
import pytest
import torch

from pipehelp import ROAD, SKY, StubBackend, decode_index, probe, write_clip
from pipeline import segment
from pipeline.stream import _END
from train.data import find_pairs, read_mask
from train.errors import PartialInputError, StageError
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


def test_ctrl_c_before_the_first_frame_does_not_wait_for_the_source(tmp_path, settings):
    """A pipe with no writer yet: Ctrl-C in the loop returns at once, not when the source gives up."""
    import os
    import signal
    import time
    fifo = tmp_path / "feed.ts"
    os.mkfifo(fifo)
    frames = segment(fifo, settings.override(decode={"stall_timeout_s": 30}), backend=StubBackend())
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(frames)
        assert time.monotonic() - t0 < 10                # the source would have waited 30 s
    finally:
        with open(fifo, "wb"):                           # a writer that closes: the source gives up
            pass
        time.sleep(0.5)
