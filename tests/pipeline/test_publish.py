"""--out URL: the segmented video as a live stream (MPEG-TS over UDP, RTSP push), received by a real
FFmpeg client (PyAV in another process) on 127.0.0.1."""
import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pipehelp import StubBackend, write_clip
from pipeline.cli import main

RECEIVER = textwrap.dedent("""
    import json, sys, av
    url, options = sys.argv[1], json.loads(sys.argv[2])
    c = av.open(url, options=options, timeout=15)
    frames, sound = [], 0
    try:
        for packet in c.demux():
            for f in packet.decode():
                if packet.stream.type == "video":
                    frames.append((f.width, f.height, None if f.time is None else round(f.time, 3)))
                else:
                    sound += f.samples
    except av.FFmpegError:
        pass                      # UDP: no end of stream, the read times out after the last packet
    print(json.dumps({"frames": frames, "sound_s": sound / 48000}))
""")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receive(url: str, options: dict) -> subprocess.Popen:
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER, url, json.dumps(options)], stdout=subprocess.PIPE,
                          text=True)
    time.sleep(1.0)               # listening before the first packet goes out
    return rx


@pytest.fixture
def stub_model(monkeypatch):
    import pipeline.run
    monkeypatch.setattr(pipeline.run, "load_backend", lambda *args, **kwargs: StubBackend())


@pytest.mark.parametrize("scheme", ["udp", "rtsp"])
def test_a_file_is_streamed_at_its_own_rate(tmp_path, stub_model, scheme):
    clip = write_clip(tmp_path / "clip.mp4", frames=20, rate=20, audio="aac")       # 1 s of video, with sound
    if scheme == "udp":
        port = free_port(socket.SOCK_DGRAM)
        rx = receive(f"udp://127.0.0.1:{port}?timeout=2000000", {})
        url = f"udp://127.0.0.1:{port}"
    else:
        port = free_port()
        url = f"rtsp://127.0.0.1:{port}/seg"
        rx = receive(url, {"rtsp_flags": "listen", "listen_timeout": "15"})
    t0 = time.monotonic()
    assert main(["run", str(clip), "--out", url, "--no-progress", "--stats", str(tmp_path / "s.json")]) == 0
    wall = time.monotonic() - t0
    got = json.loads(rx.communicate(timeout=30)[0])
    frames = got["frames"]
    assert wall > 0.9                                                  # paced: not 20 frames in a burst
    assert len(frames) == 20 and {(w, h) for w, h, _ in frames} == {(96, 64)}
    times = [t for _, _, t in frames if t is not None]      # RTSP: the first frame comes before its clock
    assert len(times) >= 19 and all(abs(b - a - 0.05) < 0.002 for a, b in zip(times, times[1:]))   # 1/20 s
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["frames"] == 20 and stats["dropped"] == 0 and stats["audio"] == "copied (aac)"
    assert got["sound_s"] > 0.8                                          # the sound went with it
    assert not list(tmp_path.glob("*.settings.yaml"))                # nothing beside a stream


def test_a_server_that_is_not_there_is_one_line_and_exit_1(tmp_path, stub_model, capsys):
    clip = write_clip(tmp_path / "clip.mp4")
    url = f"rtsp://127.0.0.1:{free_port()}/seg"
    t0 = time.monotonic()
    assert main(["run", str(clip), "--out", url, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"segpipe run: error: cannot stream to {url}: ") and "is the server running" in err
    assert time.monotonic() - t0 < 15 and "Traceback" not in err
