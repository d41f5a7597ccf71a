"""Faults while running: a stage that raises, an encoder that cannot write (disk full), SIGINT and
SIGTERM, a source that stalls. Each ends promptly with its exit code and one line saying what the
output holds; an output file that exists is playable with exactly the frames it says.
"""
from __future__ import annotations

import _thread
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import pytest

import pipeline.encode
import pipeline.run
from faultmedia import ROOT, StubBackend, frame_image, probe, write_video
from pipeline.run import run, settings_path
from pipeline.sources import SourceInfo
from train.errors import PartialInputError


def frames_done(line: str) -> int:
    return int(re.search(r"complete with the (\d+) frames done", line).group(1))


# --- a stage that raises ---------------------------------------------------------------------------------
def test_a_stage_raising_mid_stream_exits_1_with_a_playable_output(tmp_path, cli, monkeypatch):
    src = write_video(tmp_path / "clip.mp4", 60)
    out = tmp_path / "seg.mp4"
    monkeypatch.setattr(pipeline.run, "load_backend", lambda *args, **kwargs: StubBackend(
        fail_at=6, error=RuntimeError("CUDA error: an illegal memory access was encountered")))
    t = time.monotonic()
    code, last, err, _ = cli("run", src, "--out", out, "--batch", "2", stub=False)
    assert time.monotonic() - t < 10
    assert code == 1 and "stage infer failed: RuntimeError: CUDA error: an illegal memory access" in last, err
    assert "Traceback" not in err
    done = frames_done(last)
    assert 0 < done <= 10 and probe(out)["frames"] == done


# --- the encoder cannot write --------------------------------------------------------------------------------
def test_a_write_error_says_the_disk_is_full_and_keeps_what_was_written(tmp_path, cli, monkeypatch):
    """Injected: the 6th packet's write fails with ENOSPC (works without root)."""
    original = pipeline.encode.Encode._mux

    def mux(self, packets):
        if self.packets >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, packets)

    monkeypatch.setattr(pipeline.encode.Encode, "_mux", mux)
    out = tmp_path / "seg.mp4"
    code, last, err, _ = cli("run", write_video(tmp_path / "clip.mp4", 30), "--out", out)
    assert code == 1, err
    assert f"cannot write {out}: the disk is full (No space left on device): free some space" in last
    assert frames_done(last) == 5 and probe(out)["frames"] == 5


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_a_full_disk_keeps_the_frames_that_reached_it_playable(tmp_path, cli, tmpfs, ext):
    """A real 200 kB disk. An MKV plays without its end; an MP4 is written in fragments, and the one the
    error cut short is trimmed to its whole packets (sound included), so the file decodes to the end
    without an error."""
    src = write_video(tmp_path / "noise.mkv", 40, 160, 120, noise=True, options={"crf": "23"}, audio="aac")
    out = tmpfs / f"seg.{ext}"
    code, last, err, _ = cli("run", src, "--out", out)
    assert code == 1 and "the disk is full" in last and "Traceback" not in err, err
    assert 0 < frames_done(last) < 40 and probe(out)["frames"] >= 1
    if ext == "mp4":
        assert probe(out)["frames"] == frames_done(last)
        with av.open(str(out)) as c:
            c.streams.audio[0].codec_context.options = {"err_detect": "explode"}   # a cut packet would raise
            assert sum(f.samples for f in c.decode(audio=0)) > 0


def test_an_mp4_written_in_one_piece_is_removed_when_the_disk_fills(tmp_path, cli, tmpfs):
    """encode.fragment_s 0: the classic MP4, whose index comes last; without it the file would not play."""
    config = tmp_path / "pipeline.yaml"
    config.write_text("encode:\n  fragment_s: 0\n")
    src = write_video(tmp_path / "noise.mkv", 40, 160, 120, noise=True, options={"crf": "23"})
    out = tmpfs / "seg.mp4"
    code, last, err, _ = cli("run", src, "--out", out, "--config", config)
    assert code == 1 and "the disk is full" in last and "Traceback" not in err, err
    assert not out.exists() and f"nothing was written to {out} (it does not exist)" in last
    assert not settings_path(out).exists()


# --- signals ---------------------------------------------------------------------------------------------
def run_until_written(src, out, min_bytes: int, stderr) -> subprocess.Popen:
    """`segpipe run src --out out` (one frame per batch) in a subprocess, once ``out`` holds ``min_bytes``."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(src), "--out", str(out),
                             "--no-progress", "--batch", "1"], cwd=ROOT, stderr=stderr, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > min_bytes):
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finalises_the_output_and_stops_every_thread_promptly(tmp_path, sig, code):
    out = tmp_path / "seg.mp4"
    proc = run_until_written(write_video(tmp_path / "long.mp4", 600, 160, 120), out, 2000, subprocess.PIPE)
    try:
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == code, err
    print(f"stopped {took:.2f} s after {sig!r}")
    assert took < 3, f"took {took:.1f} s to stop"
    assert "did not stop within" not in err and "Traceback" not in err
    lines = err.strip().splitlines()
    if sig == signal.SIGTERM:
        assert lines[-1].startswith("segpipe run: error: terminated (SIGTERM) after ")
    else:
        assert lines[-1] == "segpipe run: interrupted" and "interrupted after" in lines[-2]
    done = frames_done(err)
    assert 0 < done < 600 and probe(out)["frames"] == done


@pytest.mark.parametrize("ext", ["mp4", "mov"])
def test_a_killed_run_leaves_an_mp4_that_plays_to_its_last_whole_fragment(tmp_path, ext):
    """SIGKILL (as the OOM killer or a power cut would end it): nothing can finalise the file, yet every
    fragment written before it plays, sound included. encode.fragment_s is 1 s, so at most the last second
    is lost."""
    out = tmp_path / f"seg.{ext}"
    src = write_video(tmp_path / "long.mp4", 600, 160, 120, audio="aac")
    proc = run_until_written(src, out, 20_000, subprocess.DEVNULL)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    kept = probe(out)
    assert 20 <= kept["frames"] < 600                      # whole 1 s fragments at 20 fps
    assert kept["pts"] == sorted(kept["pts"]) and len(set(kept["pts"])) == kept["frames"]
    with av.open(str(out)) as c:
        sound = [f.time for f in c.decode(audio=0)]               # decodes without an error
    assert len(sound) > 20 and abs(sound[-1] - kept["seconds"][-1]) < 0.1     # up to the same moment


class EndlessCamera:
    """A live source that never ends and never waits on its queue (drop-oldest)."""

    def __init__(self):
        self.info = SourceInfo("camera", "fake-camera", 96, 64, Fraction(30), Fraction(1, 1000), None, True)
        self.skipped, self.error = 0, None

    def frames(self):
        i = 0
        while True:
            time.sleep(0.002)
            yield i, i * 33, self.info.time_base, frame_image(i % 64, 96, 64)
            i += 1

    def close(self):
        pass


def test_ctrl_c_stops_a_live_source_promptly(tmp_path, settings):
    """Its queue drops the oldest, so it never blocks on a full queue: the stop reaches it at its next put."""
    out = tmp_path / "live.mp4"
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(EndlessCamera(), out, settings, backend=StubBackend(delay_s=0.01))
    finally:
        timer.cancel()
    assert time.monotonic() - t < 2.5
    assert probe(out)["frames"] > 0


# --- a source that stalls ------------------------------------------------------------------------------------
class StallingSource:
    """Gives ``n`` frames, then nothing until ``release`` is set (a camera that froze, a hung mount)."""

    def __init__(self, n: int = 5):
        self.n, self.release = n, threading.Event()
        self.info = SourceInfo("file", "frozen.mp4", 96, 64, Fraction(20), Fraction(1, 20), 100, False)
        self.skipped, self.error = 0, None

    def frames(self):
        for i in range(self.n):
            yield i, i, self.info.time_base, frame_image(i, 96, 64)
        self.release.wait()

    def close(self):
        pass


def test_a_stalled_source_is_a_timeout_not_a_hang(tmp_path, settings):
    source, out = StallingSource(5), tmp_path / "seg.mp4"
    t = time.monotonic()
    try:
        with pytest.raises(PartialInputError, match=r"no frame from frozen.mp4 for 1 s after 5 frames: the source "
                                                    r"stalled .* raise decode.stall_timeout_s") as info:
            run(source, out, settings.override(decode={"stall_timeout_s": 0.5}), backend=StubBackend())
        took = time.monotonic() - t
    finally:
        source.release.set()
    assert info.value.exit_code == 3 and took < 4
    assert "complete with the 5 frames done" in str(info.value) and probe(out)["frames"] == 5


def test_a_pipe_that_goes_quiet_through_the_cli(tmp_path, cli):
    """A real blocking read: a FIFO whose writer sends half a video, then nothing."""
    data = write_video(tmp_path / "clip.mkv", 40).read_bytes()
    fifo = tmp_path / "feed.mkv"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer():
        with open(fifo, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            release.wait(30)

    feeder = threading.Thread(target=writer, daemon=True)
    feeder.start()
    (tmp_path / "p.yaml").write_text("decode: {stall_timeout_s: 1}\n")
    out = tmp_path / "seg.mp4"
    try:
        t = time.monotonic()
        code, last, err, _ = cli("run", fifo, "--out", out, "--config", tmp_path / "p.yaml")
        took = time.monotonic() - t
    finally:
        release.set()
        feeder.join(5)
    assert code == 3, err
    assert f"no frame from {fifo} for 1 s after" in last and took < 8
    done = frames_done(last)
    assert 0 < done < 40 and probe(out)["frames"] == done


def test_a_source_that_never_opens_is_a_timeout_not_a_hang(tmp_path, cli):
    """A FIFO nobody writes to: opening it blocks; that is a stall too."""
    fifo = tmp_path / "never.mp4"
    os.mkfifo(fifo)
    (tmp_path / "p.yaml").write_text("decode: {stall_timeout_s: 0.5}\n")
    out = tmp_path / "seg.mp4"
    try:
        code, last, err, _ = cli("run", fifo, "--out", out, "--config", tmp_path / "p.yaml")
    finally:
        with open(fifo, "wb"):                       # let the abandoned opener go
            pass
    assert code == 1 and f"opening {fifo} gave nothing for 0.5 s: the source stalled" in last, err
    assert not out.exists()
