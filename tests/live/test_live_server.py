"""The browser view: its routes (and nothing else), MJPEG to several viewers at once, and the page in
headless Chromium."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from livehelp import free_port, http_get, raw_request, read_mjpeg, run_in_thread, wait_for_http
from pipeline.hud import LiveState
from pipeline.live import LiveSettings, run_live
from pipeline.server import FrameHub, LiveServer, parse_address
from train.errors import InvalidInputError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=800,600"]


def jpeg(i: int, size=(120, 160)) -> bytes:
    img = np.zeros((*size, 3), np.uint8)
    img[:, (i * 7) % size[1]:, 1] = 200
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture
def server():
    hub = FrameHub()
    srv = LiveServer("127.0.0.1", 0, hub, lambda: {"fps": 1.0, "status": "live"})
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("text, expected", [
    (None, ("127.0.0.1", 8080)), ("127.0.0.1:8090", ("127.0.0.1", 8090)), (":9000", ("127.0.0.1", 9000)),
    ("9000", ("127.0.0.1", 9000)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8081", ("::1", 8081)),
    ("localhost", ("localhost", 8080))])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


def test_a_server_on_every_interface_is_announced_by_the_machine_name():
    """http://0.0.0.0:port/ does not open in every browser: the URL names this machine instead."""
    srv = LiveServer("0.0.0.0", 0, FrameHub(), lambda: {})
    try:
        assert srv.url == f"http://{socket.gethostname()}:{srv.address[1]}/"
    finally:
        srv.stop()


@pytest.mark.parametrize("text", ["127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_address(text):
    with pytest.raises(InvalidInputError, match="port"):
        parse_address(text)


def test_routes_and_nothing_else(server):
    port = server.address[1]
    status, headers, body = http_get(port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/stream"' in body and b"/stats" in body
    status, headers, body = http_get(port, "/stats")
    assert status == 200 and json.loads(body) == {"fps": 1.0, "status": "live", "viewers": 0}
    assert http_get(port, "/frame.jpg")[0] == 503                     # no frame yet
    server.hub.publish(jpeg(1))
    status, headers, body = http_get(port, "/frame.jpg?t=5")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body == jpeg(1)
    for path in ["/nope", "/index.htm", "/web/index.html", "/pipeline/web/index.html", "/live.py",
                 "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/stream/../../etc/passwd"]:
        assert http_get(port, path)[0] == 404, path
    assert raw_request(port, b"GET /../../../etc/passwd HTTP/1.0\r\n\r\n").endswith(b"404 Not Found")
    assert raw_request(port, b"GET C:\\Windows\\win.ini HTTP/1.0\r\n\r\n").endswith(b"404 Not Found")
    assert b" 501 " in raw_request(port, b"POST /stats HTTP/1.0\r\nContent-Length: 0\r\n\r\n")


def test_a_busy_port_is_one_clear_error(server):
    with pytest.raises(InvalidInputError, match="port is in use"):
        LiveServer("127.0.0.1", server.address[1], FrameHub(), dict)


def test_mjpeg_stream_sends_the_newest_frames(server):
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set():
            server.hub.publish(jpeg(i))
            i += 1
            time.sleep(0.02)

    t = threading.Thread(target=publish)
    t.start()
    try:
        parts = read_mjpeg(server.address[1], 3)
    finally:
        stop.set()
        t.join()
    images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
    assert all(img is not None and img.shape == (120, 160, 3) for img in images)
    assert len({p for p in parts}) == 3                                # three different frames


def test_stalled_viewers_do_not_slow_the_publisher(server):
    """Four viewers that never read, one that does: publishing stays instant, the reader gets new frames."""
    port = server.address[1]
    stalled = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(s)
    noise = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8))[1].tobytes()
    deadline = time.monotonic() + 5
    while server.hub.viewers < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.hub.viewers == 4
    reader = run_in_thread(read_mjpeg, port, 5)
    took = []
    for i in range(60):                             # ~300 kB each: the stalled sockets fill at once
        t = time.perf_counter()
        server.hub.publish(noise + bytes([i]))
        took.append(time.perf_counter() - t)
        time.sleep(0.01)
    parts = reader(10)
    assert max(took) < 0.01, max(took)
    assert len(set(parts)) == 5
    for s in stalled:
        s.close()


def test_live_serve_end_to_end_and_stats(tmp_path, clip, stub, settings):
    """run_live with --serve: the stream shows changing frames, /stats has the HUD numbers."""
    port = free_port()
    state = LiveState()
    done = run_in_thread(run_live, clip, settings, LiveSettings(realtime=True, loop=True),
                         serve=f"127.0.0.1:{port}", backend=stub, state=state, stats_path=tmp_path / "s.json")
    try:
        wait_for_http(port)
        parts = read_mjpeg(port, 2)
        time.sleep(0.3)
        stats = json.loads(http_get(port, "/stats")[2])
    finally:
        state.request_quit("test")
        result = done(20)
    assert parts[0] != parts[1]
    assert stats["status"] == "live" and stats["frames"] > 0 and stats["fps"] > 0 and stats["backend"] == "stub"
    assert stats["latency_ms"] is not None and stats["view"] == "overlay"
    assert result["live"]["view"] == "serve" and result["live"]["exit"] == "test"
    saved = json.loads((tmp_path / "s.json").read_text())
    for key in ("frames", "dropped", "fps", "wall_s", "backend", "device", "stages", "latency_ms"):
        assert key in saved
    assert set(saved["latency_ms"]) == {"p50", "p95", "p99"}


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                             "(apt-get install -y --no-install-recommends chromium)")
def test_the_page_in_headless_chromium(tmp_path, stub, settings):
    """The page loads in a real browser, plays the stream (two screenshots a second apart differ where
    the video is) and fills in the live numbers from /stats."""
    from livehelp import write_clip
    clip = write_clip(tmp_path / "big.mp4", frames=40, width=320, height=240)
    port = free_port()
    state = LiveState()
    done = run_in_thread(run_live, clip, settings, LiveSettings(realtime=True, loop=True),
                         serve=f"127.0.0.1:{port}", backend=stub, state=state)
    url = f"http://127.0.0.1:{port}/"

    def chromium(*args):
        out = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, url],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        return out.stdout

    try:
        wait_for_http(port)
        read_mjpeg(port, 1)                                    # frames are flowing
        shots = []
        for name in ("a.png", "b.png"):
            chromium(f"--screenshot={tmp_path / name}")
            shots.append(cv2.imread(str(tmp_path / name)))
            time.sleep(1.0)
        dom = chromium("--virtual-time-budget=2000", "--dump-dom")
    finally:
        state.request_quit("test")
        done(20)
    a, b = shots
    assert a is not None and b is not None and a.shape == b.shape
    # the video: what is not page background, between the header and the numbers
    body = (np.abs(a.astype(int) - 17).max(axis=2) > 12)
    body[:45], body[-120:] = False, False
    ys, xs = np.nonzero(body)
    assert len(ys) > 320 * 240 * 0.5, "no video on the page"
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert np.abs(a[box].astype(int) - b[box]).max() > 40, "the video did not change in a second"
    assert 'id="status" class="">live<' in dom
    frames = int(dom.split('id="frames">', 1)[1].split("<", 1)[0])
    assert frames > 0 and 'id="viewers">' in dom


def test_viewers_that_reset_mid_response_leave_no_traceback(server, capfd, caplog):
    port = server.address[1]
    for i in range(30):                     # request, then reset at once (RST, not FIN): the reply hits a dead socket
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()
    assert http_get(port, "/stats")[0] == 200                       # still serving
    try:                                                            # and the server's own error path, directly
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        server.httpd.handle_error(None, ("127.0.0.1", 1))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        server.httpd.handle_error(None, ("127.0.0.1", 1))
    assert "Traceback" not in capfd.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == \
        ["http 127.0.0.1: request failed: RuntimeError: boom"]


def test_an_unwatched_stream_encodes_a_frame_a_second(monkeypatch):
    import pipeline.server
    from pipeline.frame import Frame
    from pipeline.server import Serve

    now = [100.0]
    monkeypatch.setattr(pipeline.server.time, "monotonic", lambda: now[0])
    hub, state = FrameHub(), LiveState("overlay", 0.5)
    serve = Serve(hub, state.tracker("serve"))
    image = np.zeros((48, 64, 3), np.uint8)

    def frames(n, step_s):
        for i in range(n):
            serve.process(Frame(i, i, 1, image, time.perf_counter(), output=image))
            now[0] += step_s

    frames(10, 0.05)                                        # nobody on /stream, 0.5 s: the first only
    assert hub.seq == 1 and state.trackers["serve"].latency_s.count == 10
    frames(20, 0.05)                                        # 1 s more: one more
    assert hub.seq == 2
    hub.viewers = 1                                         # someone watches: every frame
    frames(3, 0.05)
    assert hub.seq == 5
