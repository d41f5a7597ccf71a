"""Output timing where the input's cannot be copied as it is: timestamps that go back (files joined end to
end), encoders that refuse the source's time base (mpeg4 and a TS's 1/90000) and fixed-rate AVI."""
import logging
import time
from fractions import Fraction

import cv2
import numpy as np
import pytest

from pipehelp import probe, write_clip
from pipeline.encode import Encode
from pipeline.frame import Frame
from pipeline.run import run

TS_TICK = Fraction(1, 90000)


def joined_ts(tmp_path, frames=20):
    """Two TS clips of ``frames`` frames at 20 fps, concatenated byte for byte (as `cat a.ts b.ts` does):
    the second one's pts start again from the beginning."""
    a = write_clip(tmp_path / "a.ts", frames=frames, width=64, height=48, rate=20)
    b = write_clip(tmp_path / "b.ts", frames=frames, width=64, height=48, rate=20)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    return a, joined


def test_timestamps_that_go_back_continue_one_frame_later(tmp_path, stub, settings, caplog):
    a, joined = joined_ts(tmp_path)
    out = tmp_path / "joined.mp4"
    with caplog.at_level(logging.WARNING, "segpipe.pipeline"):
        stats = run(joined, out, settings, backend=stub)
    got, src = probe(out), probe(a)
    assert got["frames"] == stats["frames"] == 40
    assert got["time_base"] == TS_TICK and got["pts"][:20] == src["pts"]      # the first part as it was
    steps = {q - p for p, q in zip(got["pts"], got["pts"][1:])}
    assert steps == {4500}                                                     # 1/20 s apart throughout
    assert got["seconds"][-1] - got["seconds"][0] == pytest.approx(39 / 20)   # twice as long, not 1 s
    back = [r for r in caplog.records if "went back" in r.getMessage()]
    assert len(back) == 1 and "frame 20" in back[0].getMessage()


def encode_pts(tmp_path, source_pts) -> Encode:
    enc = Encode(tmp_path / "out.mkv", 64, 48, Fraction(20), Fraction(1, 1000))
    enc.setup()
    for i, pts in enumerate(source_pts):
        frame = Frame(i, pts, Fraction(1, 1000), np.zeros((48, 64, 3), np.uint8), time.perf_counter())
        frame.output = frame.image
        enc.process(frame)
    enc.finish()
    enc.teardown()
    return enc


def test_timestamps_that_start_again_twice_keep_their_spacing(tmp_path, caplog):
    """Each recording that starts again (back by more than two frames) follows the last one's end."""
    with caplog.at_level(logging.WARNING, "segpipe.pipeline"):
        enc = encode_pts(tmp_path, [0, 50, 100, 150, 0, 50, 100, 0, 50])
    assert probe(tmp_path / "out.mkv")["pts"] == [0, 50, 100, 150, 200, 250, 300, 350, 400]
    assert enc.delivered == 9                          # latency is tracked by the pts the encoder got
    assert sum("went back" in r.getMessage() for r in caplog.records) == 1


def test_a_late_frame_does_not_delay_the_frames_after_it(tmp_path, caplog):
    """A damaged stream's decoder may give a frame late: it goes just after the last, the rest keep their
    times (and stay in step with the sound)."""
    with caplog.at_level(logging.WARNING, "segpipe.pipeline"):
        encode_pts(tmp_path, [0, 50, 100, 200, 150, 250, 300])
        assert probe(tmp_path / "out.mkv")["pts"] == [0, 50, 100, 200, 201, 250, 300]
        encode_pts(tmp_path, [0, 50, 100, 150, 200, 250, 300, 350, 50, 400, 450])       # 7 frames late
        assert probe(tmp_path / "out.mkv")["pts"] == [0, 50, 100, 150, 200, 250, 300, 350, 400, 401, 450]
    assert "went back" not in caplog.text


def test_mpeg4_from_a_ts_input(tmp_path, stub, settings):
    """mpeg4 takes time base denominators up to 65535 only; a TS's is 90000."""
    clip = write_clip(tmp_path / "in.ts", frames=20, width=64, height=48, rate=20)
    out = tmp_path / "seg.mp4"
    stats = run(clip, out, settings.override(encode={"codec": "mpeg4"}), backend=stub)
    got, src = probe(out), probe(clip)
    assert got["codec"] == "mpeg4" and got["frames"] == stats["frames"] == 20 and got["rate"] == 20
    assert got["seconds"] == pytest.approx(src["seconds"])                    # the input's timing


@pytest.mark.parametrize("ext", [".mp4", ".ts"])
def test_avi_reads_back_at_the_source_rate(tmp_path, stub, settings, ext):
    clip = write_clip(tmp_path / f"in{ext}", frames=30, width=64, height=48, rate=20)
    out = tmp_path / "seg.avi"
    run(clip, out, settings, backend=stub)
    got, src = probe(out), probe(clip)
    assert got["frames"] == 30 and got["rate"] == 20
    offset = got["seconds"][0] - src["seconds"][0]        # AVI delays H.264 by a frame on reading
    assert [s - offset for s in got["seconds"]] == pytest.approx(src["seconds"])
    cap = cv2.VideoCapture(str(out))
    try:
        assert cap.get(cv2.CAP_PROP_FPS) == 20
        assert 30 <= cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 30 + 20 * src["seconds"][0] + 1
    finally:
        cap.release()
