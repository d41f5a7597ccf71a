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
    assert stats["stages"]["encode"]["busy_s"] < 0.5 * wall     # its work, not the second of pacing
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


def noise_clip(path, frames: int = 20):
    """Lossless noise at 640x480: megabytes a second, so a receiver that stops reading blocks the sender."""
    import av
    import numpy as np
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=20, options={"crf": "0", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        c.mux(s.encode())
    return path


def test_a_receiver_that_stops_reading_stops_the_run_instead_of_a_hang(tmp_path, stub_model, capsys, monkeypatch):
    import pipeline.publish
    monkeypatch.setattr(pipeline.publish, "SEND_TIMEOUT_S", 1.0)
    clip = noise_clip(tmp_path / "noise.mp4")
    (tmp_path / "lossless.yaml").write_text("encode:\n  crf: 0\n")
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    try:                # accepted by the kernel, never read
        t0 = time.monotonic()
        code = main(["run", str(clip), "--out", url, "--config", str(tmp_path / "lossless.yaml"), "--no-progress"])
        wall = time.monotonic() - t0
    finally:
        server.close()  # (the abandoned writer's send fails now, and its thread ends)
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{url} took nothing for 1 s: the receiver stopped reading" in err.strip().splitlines()[-1]
    assert wall < 20 and "Traceback" not in err
