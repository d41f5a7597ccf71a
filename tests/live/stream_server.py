"""A live MPEG-TS stream over TCP, as a camera or encoder box would serve it, for the reconnect tests.

    python stream_server.py PORT [--fps 20] [--size 160x120]

Listens on 127.0.0.1:PORT (FFmpeg's tcp protocol, via PyAV), and once a viewer connects sends H.264
frames at their real rate (x264 zerolatency, a keyframe every 10 frames, so a viewer starts quickly)
until it is killed or the viewer leaves. Each frame shows a moving bar and its index in binary, so a
viewer can tell frames apart. The socket opens at the first write (PyAV opens outputs lazily), so a
client waits until the port is listening (``livehelp.wait_listening``) rather than probing it: a probe
would be taken as the one viewer.
"""
from __future__ import annotations

import argparse
import sys
import time

import av
import numpy as np


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 2] = 80
    x = (i * 4) % width
    img[:, x:x + 8, 0] = 255                    # a bar that moves
    for k in range(8):                          # the index in binary along the top
        if i >> k & 1:
            img[:8, k * 10:k * 10 + 8, 1] = 255
    return img


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--fps", type=int, default=20)
    ap.add_argument("--size", default="160x120", help="WxH")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    out = av.open(f"tcp://127.0.0.1:{a.port}?listen=1", "w", format="mpegts")
    stream = out.add_stream("libx264", rate=a.fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "10"}
    t0 = None
    try:
        for i in range(10**9):
            frame = av.VideoFrame.from_ndarray(frame_image(i, w, h), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)          # the first write waits for a viewer to connect
            t0 = time.perf_counter() - i / a.fps if t0 is None else t0
            delay = t0 + (i + 1) / a.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    except (BrokenPipeError, ConnectionResetError, av.FFmpegError) as e:
        print(f"viewer left: {e}", file=sys.stderr, flush=True)
    finally:
        try:
            out.close()
        except (OSError, av.FFmpegError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
