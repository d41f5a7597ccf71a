"""`segpipe live` end to end without a camera: a file paced with --realtime, a real MPEG-TS stream over TCP
that is stopped and restarted mid-run, and SIGINT/SIGTERM through the command line."""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from livehelp import (StreamServer, StubBackend, free_port, http_get, probe, run_in_thread, segpipe,
                      wait_for_http, write_clip)
from pipeline.hud import LiveState
from pipeline.live import LiveSettings, run_live
from train.errors import MediaError, StageError

SCHEMA = ("frames", "dropped", "damaged", "fps", "wall_s", "backend", "device", "precision", "stages", "latency_ms",
          "exit")


def wait_until(cond, timeout_s=15.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_file_without_realtime_plays_every_frame(tmp_path, clip, stub, settings):
    rec = tmp_path / "rec.mp4"
    stats = run_live(clip, settings, record=rec, backend=stub)
    assert stats["frames"] == 20 and stats["dropped"] == 0 and stats["live"]["mode"] == "every-frame"
    got = probe(rec)
    assert got["frames"] == 20 and (got["width"], got["height"]) == (96, 64)
    assert (rec.parent / "rec.mp4.settings.yaml").exists()


def test_a_duration_ends_the_capture_and_every_frame_captured_is_recorded(tmp_path, clip, stub, settings, caplog):
    """--duration with --loop: what was captured is finished and recorded (nothing unaccounted for), and
    the looped passes go on in time (no warning about timestamps going back)."""
    rec = tmp_path / "rec.mp4"
    stats = run_live(clip, settings, LiveSettings(loop=True), record=rec, backend=stub, duration_s=1.5)
    captured = stats["live"]["captured"]
    assert captured > 20 and stats["frames"] == captured and stats["dropped"] == 0
    assert probe(rec)["frames"] == captured and stats["live"]["exit"] == "duration"
    assert "went back" not in caplog.text


def test_a_slow_model_drops_the_oldest_and_latency_stays_bounded(tmp_path, settings):
    """Frames come every 50 ms, the model needs 120: the newest frame wins, drops are counted, and the
    latency does not grow over the run (it would with queues that keep every frame)."""
    clip = write_clip(tmp_path / "long.mp4", frames=60)          # 3 s at 20 fps
    slow = StubBackend(delay_s=0.12)
    stats = run_live(clip, settings, LiveSettings(realtime=True), record=tmp_path / "rec.mp4", backend=slow)
    live = stats["live"]
    assert stats["dropped"] >= 20 and sum(live["queue_drops"].values()) == stats["dropped"]
    assert stats["frames"] + stats["dropped"] <= 60
    assert stats["latency_ms"]["p95"] < 400                       # a few model calls, not a backlog
    first, _, last = live["latency_p95_ms_by_third"]
    assert last < first + 150                                     # no growth
    assert live["mode"] == "realtime" and live["view"] == "record"


def test_a_stream_that_drops_is_reopened(tmp_path, stub, settings):
    """A real MPEG-TS stream (PyAV over TCP) is killed mid-run and restarted: the demo says it is
    reconnecting, picks the stream up again, and the recording plays across the gap."""
    port, web = free_port(), free_port()
    server = StreamServer(port).start()
    state = LiveState()
    rec, stats_path = tmp_path / "rec.mp4", tmp_path / "live.json"
    live = LiveSettings(reconnect_attempts=30, reconnect_backoff_s=0.1, reconnect_backoff_max_s=0.2)
    done = run_in_thread(run_live, f"tcp://127.0.0.1:{port}", settings, live, serve=f"127.0.0.1:{web}",
                         record=rec, stats_path=stats_path, backend=stub, state=state)
    try:
        wait_for_http(web)
        tracker = state.tracker("serve")
        wait_until(lambda: tracker.frames >= 10, what="frames from the stream")
        server.kill()
        wait_until(lambda: state.message.startswith("reconnecting"), 12, "the reconnect")
        hud = json.loads(http_get(web, "/stats")[2])
        time.sleep(0.5)
        before = tracker.frames
        server.start()
        wait_until(lambda: tracker.frames >= before + 10, what="frames after the restart")
        assert state.message == ""
    finally:
        state.request_quit("test")
        server.kill()
        stats = done(30)
    assert hud["status"].startswith("reconnecting (attempt ") and hud["status"].endswith("/30)")
    assert stats["live"]["reconnects"] == 1 and stats["live"]["mode"] == "stream"
    assert stats["live"]["exit"] == "test"
    got = probe(rec)
    assert got["frames"] >= 15 and got["pts"] == sorted(set(got["pts"]))
    gap_s = max(b - a for a, b in zip(got["pts"], got["pts"][1:])) * float(got["time_base"])
    assert gap_s >= 0.4                                           # the outage is in the recording's timing
    assert json.loads(stats_path.read_text())["live"]["reconnects"] == 1


def test_a_stream_that_never_comes_back_ends_with_a_clear_error(tmp_path, stub, settings):
    port, web = free_port(), free_port()
    server = StreamServer(port).start()
    state = LiveState()
    stats_path = tmp_path / "live.json"
    live = LiveSettings(reconnect_attempts=2, reconnect_backoff_s=0.1, reconnect_backoff_max_s=0.1)
    done = run_in_thread(run_live, f"tcp://127.0.0.1:{port}", settings, live, serve=f"127.0.0.1:{web}",
                         stats_path=stats_path, backend=stub, state=state)
    try:
        wait_until(lambda: state.tracker("serve").frames >= 5, what="the first frames")
        server.kill()
        with pytest.raises(MediaError, match=r"lost tcp://127\.0\.0\.1:\d+ \(the stream ended\) and it did "
                                             r"not come back after 2 attempts"):
            done(30)
    finally:
        server.kill()
    saved = json.loads(stats_path.read_text())                    # written before the error
    assert saved["live"]["exit"] == "source lost" and saved["exit"] == "failed" and saved["frames"] >= 5


def test_a_stage_failure_still_writes_the_stats_and_the_recording(tmp_path, clip, settings):
    rec, stats_path = tmp_path / "rec.mp4", tmp_path / "live.json"
    with pytest.raises(StageError, match="stage infer failed: RuntimeError: stub backend exploded"):
        run_live(clip, settings, record=rec, stats_path=stats_path, backend=StubBackend(fail_at=6))
    saved = json.loads(stats_path.read_text())
    assert saved["exit"] == "failed" and saved["live"]["exit"] == "stage infer failed"
    assert saved["frames"] == probe(rec)["frames"] >= 1                  # what was done is playable


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signals_end_the_demo_cleanly(tmp_path, clip, sig, code):
    """The real command and model: a signal closes the recording and writes the stats."""
    rec, stats_path = tmp_path / "rec.mp4", tmp_path / "live.json"
    proc = segpipe("live", clip, "--realtime", "--loop", "--record", rec, "--stats", stats_path)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("live: " in line for line in lines), 60, "the demo to start")
        time.sleep(1.5)
        proc.send_signal(sig)
        out = proc.stdout.read()
        assert proc.wait(30) == code, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    stats = json.loads(stats_path.read_text())
    assert all(k in stats for k in SCHEMA) and stats["live"]["exit"] == sig.name
    assert stats["exit"] == {signal.SIGTERM: "terminated", signal.SIGINT: "interrupted"}[sig]   # exit 0 all the same
    assert stats["frames"] > 5 and stats["latency_ms"]["p95"] > 0
    assert probe(rec)["frames"] > 5
    assert "frames in" in out and "latency" in out
