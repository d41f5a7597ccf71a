"""Frames lost before decoding (a transport stream that lost packets on the way) are counted and reported
like undecodable ones; clean streams (B-frames, variable frame rate, joined recordings) drop nothing.
Also: an MP4 piped into standard input, a source that opens after its timeout, and the statistics
after a write failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from fractions import Fraction

import av
import cv2
import pytest

import pipeline.run
from mediakit import write_video
from pipehelp import ROOT, StubBackend, decode_index, probe
from pipeline.run import open_within, run, summary
from pipeline.sources import PtsGaps
from train.errors import MediaError, PartialInputError

TS_PACKET = 188
FRAMES = 40
B_FRAMES = {"bf": "3"}           # decode order differs from display order


def ts_clip(tmp_path, name="clip.ts"):
    return write_video(tmp_path / name, FRAMES, 64, 48, options=B_FRAMES)


def cut_ts(src, dst, first: int, last: int):
    """``src`` without its TS packets from video packet ``first`` to ``last`` (file order), cut at 188-byte
    boundaries as a lossy network or a bad recording drops them."""
    with av.open(str(src)) as c:
        starts = sorted(p.pos for p in c.demux(c.streams.video[0]) if p.size)
    data = src.read_bytes()
    a, b = starts[first] // TS_PACKET * TS_PACKET, starts[last] // TS_PACKET * TS_PACKET
    dst.write_bytes(data[:a] + data[b:])
    return dst


def segment(tmp_path, src, settings, **kw):
    out, stats_path = tmp_path / "seg.mp4", tmp_path / "stats.json"
    stats = run(src, out, settings, stats_path=stats_path, backend=StubBackend(), **kw)
    assert json.loads(stats_path.read_text())["dropped"] == stats["dropped"]
    return stats, out


@pytest.mark.parametrize("first, last", [(15, 22), (5, 6), (10, 30)])
def test_frames_lost_from_a_transport_stream_are_counted_and_reported(tmp_path, settings, caplog, first, last):
    src = cut_ts(ts_clip(tmp_path), tmp_path / "lost.ts", first, last)
    masks = tmp_path / "masks"
    stats, out = segment(tmp_path, src, settings, masks=masks)
    frames, dropped = stats["frames"], stats["dropped"]
    assert dropped > 0 and frames + dropped == FRAMES and probe(out)["frames"] == frames
    assert stats["dropped_by"] == {"queues": 0, "undecodable": dropped} and stats["exit"] == "done"
    assert f"dropped {dropped}," in summary(stats)
    assert f"dropped {dropped} frame" in caplog.text and "lost from the stream" in caplog.text
    names = sorted(int(p.stem) for p in masks.iterdir())
    assert len(names) == frames and names[-1] < FRAMES            # each named by its place in the source
    before = [i for i in names if i < min(first, 10)]               # the frames before the loss are exact
    assert [decode_index(cv2.imread(str(masks / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)) for i in before] == before


@pytest.mark.parametrize("first, last", [(1, 4), (2, 3), (5, 6), (20, 30)])
def test_every_frame_after_a_loss_keeps_its_place(tmp_path, settings, first, last):
    """Intra-only, so every frame that came decodes: each mask is named by the frame it holds, also after a
    loss in the first frames (before the stream's rate is known)."""
    src = write_video(tmp_path / "intra.ts", FRAMES, 64, 48, options={"g": "1"})
    masks = tmp_path / "masks"
    stats, _ = segment(tmp_path, cut_ts(src, tmp_path / "lost.ts", first, last), settings, masks=masks)
    assert stats["dropped"] == last - first and stats["frames"] == FRAMES - (last - first)
    for png in masks.iterdir():
        assert decode_index(cv2.imread(str(png), cv2.IMREAD_UNCHANGED)) == int(png.stem), png.name


@pytest.mark.parametrize("name, kw", [
    ("bframes.ts", {"options": B_FRAMES}),
    ("bframes.mp4", {"options": B_FRAMES}),
    ("bframes.mkv", {"options": B_FRAMES}),
    ("late.mkv", {"pts": [1000 + 50 * i for i in range(FRAMES)], "time_base": Fraction(1, 1000)}),  # not at 0
    ("vfr.ts", {"pts": [0, 50, 100, 300, 350, 700, 710, 720, 1000, 1500], "time_base": Fraction(1, 1000)}),
    ("vfr.mkv", {"pts": [0, 50, 100, 300, 350, 700, 710, 720, 1000, 1500], "time_base": Fraction(1, 1000)}),
    ("decimated.mkv", {"pts": [50 * i for i in range(FRAMES) if i % 10 != 5], "time_base": Fraction(1, 1000)}),
])
def test_clean_streams_drop_nothing(tmp_path, settings, caplog, name, kw):
    frames = len(kw.get("pts", range(FRAMES)))
    src = write_video(tmp_path / name, frames, 64, 48, **kw)
    stats, _ = segment(tmp_path, src, settings)
    assert (stats["frames"], stats["dropped"]) == (frames, 0)
    assert "dropped" not in caplog.text


def test_a_transport_stream_of_two_joined_recordings_drops_nothing(tmp_path, settings):
    """The second one's pts start again: a discontinuity, not a gap."""
    one, two = ts_clip(tmp_path, "one.ts"), ts_clip(tmp_path, "two.ts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(one.read_bytes() + two.read_bytes())
    stats, _ = segment(tmp_path, joined, settings)
    assert (stats["frames"], stats["dropped"]) == (2 * FRAMES, 0)


def test_pts_gaps_count_only_in_a_steady_stream():
    def lost(pts, step=10):
        gaps = PtsGaps(Fraction(step), Fraction(1, 1000))
        for p in pts:
            gaps.add(p)
        gaps.finish()
        return gaps.lost

    decode_order = [0, 30, 10, 20, 40, 70, 50, 60]                 # I P B B ...
    assert lost(decode_order + [v + 80 for v in decode_order]) == 0
    assert lost([v for v in range(0, 400, 10) if v not in (150, 160, 300)]) == 3
    assert lost([0, 10, 40, 50, 90, 100, 150, 160, 170, 220]) == 0  # as many jumps as steps: variable rate
    assert lost([v * 10 + (3 if v % 3 else 0) for v in range(40) if v != 20]) == 0   # off the grid: variable


def test_an_mp4_piped_into_standard_input_says_to_pass_its_path_or_pipe_mpegts(tmp_path):
    """Its index (moov) is at the end, past what FFmpeg's read buffer holds (a small one would still play)."""
    data = write_video(tmp_path / "clip.mp4", 30, 160, 120, noise=True, options={"crf": "23"}).read_bytes()
    out = tmp_path / "seg.mp4"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-", "--out", str(out), "--no-progress"],
                          input=data, capture_output=True, timeout=120, cwd=ROOT)
    last = done.stderr.decode().strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr.decode()
    assert last.startswith("segpipe run: error: cannot open standard input: an MP4/MOV read from a pipe")
    assert "pass the file's path instead, or pipe MPEG-TS: ffmpeg -i in.mp4 -c copy -f mpegts -" in last
    assert "damaged" not in last and not out.exists()


def test_a_source_that_opens_after_its_timeout_is_closed(monkeypatch, settings):
    """Its opener thread was abandoned: the source it opens late has no other owner."""
    release, closed = threading.Event(), threading.Event()

    class Late:
        def close(self):
            closed.set()

    def slow_open(src, decode):
        release.wait(10)
        return Late()

    monkeypatch.setattr(pipeline.run, "open_source", slow_open)
    with pytest.raises(MediaError, match="gave nothing for 0.2 s"):
        open_within("slow.ts", settings.override(decode={"stall_timeout_s": 0.2}).decode)
    release.set()
    assert closed.wait(5)


FULL_FILE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
import pipeline.run
from mediakit import StubBackend
pipeline.run.load_backend = lambda *a, **k: StubBackend()
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_after_a_write_failure_the_statistics_count_what_reached_the_file(tmp_path, ext):
    """Frames handed to the muxer but not in the file are dropped by "write" (a file size limit fills the
    disk, without root)."""
    src = write_video(tmp_path / "noise.mkv", 60, 160, 120, noise=True, options={"crf": "23"})
    out, stats_path = tmp_path / f"seg.{ext}", tmp_path / "stats.json"
    done = subprocess.run([sys.executable, "-c", FULL_FILE, "run", str(src), "--out", str(out), "--stats",
                           str(stats_path), "--no-progress"], capture_output=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    assert done.returncode == 1, done.stderr.decode()
    stats = json.loads(stats_path.read_text())
    kept = probe(out)["frames"]
    assert stats["frames"] == kept and f"complete with the {kept} frames done" in done.stderr.decode()
    by = stats["dropped_by"]                         # those decoded, all accounted for: in the file or not
    assert by.get("write", 0) + by.get("stopped", 0) == stats["dropped"] and stats["exit"] == "failed"
    if ext == "mkv":                                 # the muxer took every frame; the file holds fewer
        assert by["write"] > 0 and stats["frames"] + stats["dropped"] == 60


def test_a_stream_that_goes_quiet_gives_every_frame_its_decoder_held(tmp_path, settings):
    """A sender that stops without closing (a UDP or TCP stream has no end): when nothing arrives for
    decode.timeout_s, the frames the decoder still holds (B-frames reorder) come out too, and the
    message says what happened rather than FFmpeg's "Immediate exit requested"."""
    import socket
    data = ts_clip(tmp_path).read_bytes()
    server = socket.create_server(("127.0.0.1", 0))
    quiet = threading.Event()

    def send():
        conn, _ = server.accept()
        conn.sendall(data)
        quiet.wait(20)                                       # stays connected, sends nothing more
        conn.close()

    threading.Thread(target=send, daemon=True).start()
    masks = tmp_path / "masks"
    try:
        with pytest.raises(PartialInputError, match=r"ended early: 40 frames were read \(nothing arrived for 1 s "
                                                    r"\(decode.timeout_s\): the sender stopped"):
            run(f"tcp://127.0.0.1:{server.getsockname()[1]}", None, settings.override(decode={"timeout_s": 1}),
                masks=masks, backend=StubBackend())
    finally:
        quiet.set()
        server.close()
    assert sorted(decode_index(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in masks.iterdir()) \
        == list(range(FRAMES))


def test_frames_before_a_live_stream_is_joined_are_counted(tmp_path, settings):
    """`live` opens streams with fflags nobuffer: the packets FFmpeg reads while it probes the stream are
    not kept, and the decoder gives nothing until the first key frame after them. Both are counted: the
    frames out and the frames dropped add up to the frames sent."""
    import socket
    import time
    sent = 300
    data = write_video(tmp_path / "paced.ts", sent, 64, 48, rate=100, options=B_FRAMES).read_bytes()
    server, quiet = socket.create_server(("127.0.0.1", 0)), threading.Event()

    def send():                                              # at the video's own rate, as a camera sends
        conn, _ = server.accept()
        chunk = -(-len(data) // sent)
        chunk += -chunk % TS_PACKET
        for i in range(0, len(data), chunk):
            conn.sendall(data[i:i + chunk])
            time.sleep(0.01)
        quiet.wait(20)
        conn.close()

    threading.Thread(target=send, daemon=True).start()
    stats_path = tmp_path / "stats.json"
    try:
        with pytest.raises(PartialInputError, match="nothing arrived for 1 s"):
            run(f"tcp://127.0.0.1:{server.getsockname()[1]}", None,
                settings.override(decode={"timeout_s": 1, "options": {"fflags": "nobuffer"}}),
                masks=tmp_path / "masks", stats_path=stats_path, backend=StubBackend())
    finally:
        quiet.set()
        server.close()
    stats = json.loads(stats_path.read_text())
    assert stats["dropped_by"]["undecodable"] > 0 and stats["frames"] + stats["dropped"] == sent, stats
