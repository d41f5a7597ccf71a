"""Failures stop everything promptly, leave a playable output, and reach the caller; drops are counted."""
import _thread
import json
import threading
import time
from fractions import Fraction

import pytest

from pipehelp import StubBackend, frame_image, probe, write_clip
from pipeline.run import run
from train.errors import StageError
from pipeline.sources import SourceInfo
from pipeline.stage import Stage
from train.errors import InvalidInputError, PartialInputError


class FailingSink(Stage):
    """Passes frames on; at frame ``at`` waits until the encoder has written some, then raises."""
    name = "failing"

    def __init__(self, at: int, error: BaseException, encoded=None):
        super().__init__()
        self.at, self.error, self.encoded = at, error, encoded

    def process(self, frame):
        if frame.index == self.at:
            deadline = time.monotonic() + 5
            while self.encoded is not None and self.encoded() < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            raise self.error
        return frame


def test_a_stage_that_raises_stops_everything_and_leaves_a_playable_output(tmp_path, settings, monkeypatch):
    import pipeline.run

    clip = write_clip(tmp_path / "clip.mp4", frames=40)
    out, stats_path = tmp_path / "seg.mp4", tmp_path / "s.json"
    encoder = {}

    class SpyEncode(pipeline.run.Encode):
        def setup(self):
            encoder["stage"] = self
            super().setup()

    monkeypatch.setattr(pipeline.run, "Encode", SpyEncode)
    sink = FailingSink(8, ZeroDivisionError("boom"), lambda: encoder["stage"].delivered if encoder else 0)
    t = time.perf_counter()
    with pytest.raises(StageError, match="stage failing failed: ZeroDivisionError: boom") as info:
        run(clip, out, settings, backend=StubBackend(), sinks=[sink], stats_path=stats_path)
    assert time.perf_counter() - t < 4                 # the sink's wait for 3 encoded frames ended early
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert info.value.exit_code == 1
    got = probe(out)                                   # flushed and closed: it reopens and decodes
    assert 3 <= got["frames"] <= 8
    assert json.loads(stats_path.read_text())["exit"] == "failed"


def test_backend_failure_mid_stream_is_reraised(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=30)
    stub = StubBackend(fail_at=3, error=RuntimeError("CUDA error: an illegal memory access"))
    with pytest.raises(StageError, match="stage infer failed: RuntimeError: CUDA error"):
        run(clip, tmp_path / "seg.mp4", settings.override(infer={"batch": 2}), backend=stub)
    probe(tmp_path / "seg.mp4")                        # still a valid file


def test_segpipe_errors_from_stages_pass_through_unchanged(tmp_path, clip, settings):
    stub = StubBackend(fail_at=1, error=InvalidInputError("frames are the wrong size: use --size 144x192"))
    with pytest.raises(InvalidInputError, match="use --size 144x192"):
        run(clip, tmp_path / "seg.mp4", settings, backend=stub)


def test_ctrl_c_stops_the_pipeline_and_closes_the_output(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=200)
    out = tmp_path / "seg.mp4"
    timer = threading.Timer(0.6, _thread.interrupt_main)       # what Ctrl-C does
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(clip, out, settings.override(infer={"batch": 1}), backend=StubBackend(delay_s=0.02),
                stats_path=tmp_path / "s.json")
    finally:
        timer.cancel()
    got = probe(out)
    assert 0 < got["frames"] < 200
    assert json.loads((tmp_path / "s.json").read_text())["exit"] == "interrupted"


class LiveSource:
    """A camera-like source that produces frames faster than the (slow) model, with wall-clock pts."""

    def __init__(self, n=60, interval_s=0.002):
        self.n, self.interval_s = n, interval_s
        self.info = SourceInfo("camera", "fake-camera", 96, 64, Fraction(30), Fraction(1, 1_000_000), None, True)
        self.skipped, self.error = 0, None

    def frames(self):
        t0 = time.perf_counter()
        for i in range(self.n):
            time.sleep(self.interval_s)
            yield i, int((time.perf_counter() - t0) * 1e6), self.info.time_base, frame_image(i, 96, 64)

    def close(self):
        pass


def test_live_sources_drop_the_oldest_and_count_it(tmp_path, settings):
    out = tmp_path / "live.mp4"
    s = settings.override(queues={"capacity": 2}, infer={"batch": 1})
    stats = run(LiveSource(), out, s, backend=StubBackend(delay_s=0.02), masks=tmp_path / "m")
    assert stats["dropped"] > 0 and stats["dropped_by"] == {"queues": stats["dropped"], "undecodable": 0}
    assert stats["frames"] + stats["dropped"] == 60                   # every frame accounted for
    assert probe(out)["frames"] == stats["frames"]
    written = sorted(int(p.stem) for p in (tmp_path / "m").iterdir())
    assert written == sorted(written) and len(written) == stats["frames"]
    assert written[-1] == 59                                          # the newest frame is never the one dropped


def test_files_never_drop_even_when_the_model_is_slow(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=30)
    stats = run(clip, tmp_path / "seg.mp4", settings.override(queues={"capacity": 1}),
                backend=StubBackend(delay_s=0.01))
    assert stats["frames"] == 30 and stats["dropped"] == 0


def test_a_truncated_file_is_reported_after_writing_what_decoded(tmp_path, settings):
    clip = write_clip(tmp_path / "clip.mkv", frames=40)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "seg.mp4"
    with pytest.raises(PartialInputError, match="ended early") as info:
        run(cut, out, settings, backend=StubBackend(), stats_path=tmp_path / "s.json")
    assert info.value.exit_code == 3
    assert 5 < probe(out)["frames"] < 40
    assert (tmp_path / "s.json").exists()


def test_a_second_failure_is_logged_not_lost(tmp_path, settings, caplog):
    """The first failure is raised; one after it (another stage failing on its way down) is a warning."""
    class FailsToClose(Stage):
        name = "closer"

        def process(self, frame):
            return frame

        def teardown(self):
            raise OSError("disk gone while closing")

    clip = write_clip(tmp_path / "clip.mp4", frames=20)
    with pytest.raises(StageError, match="stage failing failed: ZeroDivisionError: boom"):
        run(clip, None, settings, backend=StubBackend(), sinks=[FailingSink(5, ZeroDivisionError("boom")),
                                                                FailsToClose()])
    assert "closer also failed: disk gone while closing" in caplog.text


def test_a_callers_source_without_pts_gets_them_on_the_frame_grid(tmp_path, settings):
    """run() takes any object with info and frames(); one that gives no pts still makes a timed video."""
    class NoPts(LiveSource):
        def __init__(self):
            super().__init__(n=12, interval_s=0)
            self.info = SourceInfo("file", "no-pts", 96, 64, Fraction(25), Fraction(1, 25), 12, False)

        def frames(self):
            for i in range(self.n):
                yield i, None, None, frame_image(i, 96, 64)

    out = tmp_path / "seg.mp4"
    stats = run(NoPts(), out, settings, backend=StubBackend())
    got = probe(out)
    assert stats["frames"] == got["frames"] == 12 and got["rate"] == 25
    assert got["seconds"] == pytest.approx([i / 25 for i in range(12)], abs=1e-3)
