"""Helpers for the live tests: clips, a stand-in backend, a fake window, the local stream server, HTTP."""
from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np

from mediakit import ROAD, SKY, StubBackend, probe  # noqa: F401  (shared with the other test folders)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """A bar that moves 4 px a frame (red, so the stub backend labels it road) on blue."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 2] = 90
    x = (i * 4) % width
    img[:, x:x + 12, 0] = 255
    return img


def write_clip(path: Path, frames: int = 20, width: int = 96, height: int = 64, rate: int = 20) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class FakeWindow:
    """Stands in for OpenCVWindow: keeps what is shown, returns scripted keys.

    ``keys``: {number of images shown: key} -- the key is returned by the first poll after that many
    images have been shown; ``next_key``: returned by the next poll, whatever was shown."""

    def __init__(self, keys: dict[int, int] | None = None, close_after: int | None = None):
        self.keys = dict(keys or {})
        self.close_after = close_after
        self.shown: list[np.ndarray] = []
        self.opened = self.destroyed = False
        self.polls = 0
        self.next_key = -1
        self.threads: set[str] = set()          # the threads that made window calls

    def open(self):
        self.threads.add(threading.current_thread().name)
        self.opened = True

    def show(self, bgr):
        self.threads.add(threading.current_thread().name)
        self.shown.append(bgr.copy())

    def poll(self, ms):
        self.threads.add(threading.current_thread().name)
        self.polls += 1
        key, self.next_key = self.next_key, -1
        return key if key >= 0 else self.keys.pop(len(self.shown), -1)

    def closed(self):
        return self.close_after is not None and len(self.shown) >= self.close_after

    def close(self):
        self.threads.add(threading.current_thread().name)
        self.destroyed = True


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port from bind(0) is ephemeral: a client that
    keeps reconnecting to it while nothing listens can be given it as its own source port and connect
    to itself (TCP simultaneous open), and then the restarted server cannot bind it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = range(max(1024, low - 12000), low)
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_listening(port: int, timeout_s: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:port, without connecting (a connection would be taken
    as the stream server's one viewer), or has already taken its viewer (a client that retries quickly
    can connect before this looks: the listener is then gone). Linux: reads /proc/net/tcp."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] in ("0A", "01"):       # LISTEN, or ESTABLISHED with a viewer
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class StreamServer:
    """tests/live/stream_server.py in a subprocess: start(), kill(), start() again on the same port."""

    def __init__(self, port: int, fps: int = 20):
        self.port, self.fps = port, fps
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StreamServer":
        self.proc = subprocess.Popen([sys.executable, str(HERE / "stream_server.py"), str(self.port),
                                      "--fps", str(self.fps)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def wait_for_http(port: int, timeout_s: float = 30.0) -> None:
    """Wait until the live server answers (it starts once the model is loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http_get(port, "/stats", timeout=2)[0] == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are (paths no client library would send) and return the reply's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        return s.recv(200).split(b"\r\n", 1)[0]


def read_mjpeg(port: int, parts: int, timeout: float = 10.0) -> list[bytes]:
    """The first ``parts`` JPEGs of /stream, parsed by their Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        status = f.readline()
        assert b" 200 " in status, status
        headers = {}
        while (line := f.readline().strip()):
            k, v = line.decode().split(":", 1)
            headers[k.lower()] = v.strip()
        assert headers["content-type"].startswith("multipart/x-mixed-replace"), headers
        boundary = headers["content-type"].split("boundary=")[1].encode()
        assert f.readline().strip() == b"--" + boundary
        out = []
        while len(out) < parts:
            part = {}
            while (line := f.readline().strip()):
                k, v = line.decode().split(":", 1)
                part[k.lower()] = v.strip()
            assert part["content-type"] == "image/jpeg"
            out.append(f.read(int(part["content-length"])))
            assert f.readline() == b"\r\n" and f.readline().strip() == b"--" + boundary
        return out


def run_in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; the returned function joins it and returns its result (or raises)."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:      # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, name="test-live-runner", daemon=True)
    t.start()

    def join(timeout: float = 60.0):
        t.join(timeout)
        assert not t.is_alive(), f"{fn.__name__} did not finish within {timeout} s"
        if "error" in box:
            raise box["error"]
        return box["result"]
    return join


def segpipe(*args, env=None, **kw) -> subprocess.Popen:
    """`segpipe ARGS` as a subprocess (stdout/stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **kw)
