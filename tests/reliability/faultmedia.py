"""Media for the reliability tests, made on the spot with PyAV and NumPy: good clips in awkward shapes
(odd sizes, 4K, grayscale, 10-bit, variable frame rate, MJPEG, rotated) and broken ones (truncated,
corrupted packets, audio only), plus a stand-in backend and a way to reopen an output.

Every frame spells its index in binary in 6 vertical bands (red 255 = 1); the stand-in backend labels
red pixels "road", so a label PNG written with --masks tells which input frame it came from.
"""
from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from train.classes import CARLA_CLASSES, CARLA_PALETTE

ROOT = Path(__file__).resolve().parents[2]
BITS = 6
ROAD, SKY = 7, 13


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    band = max(1, width // BITS)
    for k in range(BITS):
        if i >> k & 1:
            img[:, k * band:(k + 1) * band, 0] = 255
    img[..., 1] = (np.arange(width)[None, :] + i * 9) % 120
    img[..., 2] = 60
    return img


def decode_index(labels: np.ndarray) -> int:
    h, w = labels.shape
    band = w // BITS
    value = 0
    for k in range(BITS):
        patch = labels[h // 4: 3 * h // 4, k * band + band // 4: (k + 1) * band - band // 4]
        if np.mean(patch == ROAD) > 0.5:
            value |= 1 << k
    return value


def write_video(path: Path, frames: int = 12, width: int = 96, height: int = 64, *, rate=20,
                codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict | None = None,
                pts: list[int] | None = None, time_base: Fraction | None = None, rotation: int | None = None,
                container_options: dict | None = None, gray: bool = False, noise: bool = False) -> Path:
    """Encode ``frames`` test frames; ``pts`` (in ``time_base``) gives each its own timestamp (VFR);
    ``noise``: random pixels (frames that compress badly, to fill a disk)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        stream.options = ({"preset": "ultrafast", "crf": "10"} if codec == "libx264" else {}) | (options or {})
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            img = frame_image(i, width, height)
            if noise:
                img = rng.integers(0, 256, img.shape, dtype=np.uint8)
            if gray:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[..., 0]), format="gray")
            else:
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[i], time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet, in file order."""
    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size and p.pos is not None and p.pos >= 0]


def corrupt_packets(src: Path, dst: Path, which: list[int], seed: int = 0) -> Path:
    """Copy ``src`` with the payload of packets ``which`` (indices in file order) overwritten with noise."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    spans = packet_spans(src)
    for k in which:
        pos, size = spans[k]
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def probe(path: Path) -> dict:
    """Reopen a video: frame count, size, rate and each frame's pts (in seconds too)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        return {"frames": len(pts), "width": s.codec_context.width, "height": s.codec_context.height,
                "rate": s.average_rate, "time_base": s.time_base, "pts": pts,
                "seconds": [float(p * s.time_base) for p in pts], "codec": s.codec_context.name}


class StubBackend:
    """engine.load's contract in a few lines: road where red > 127, sky elsewhere."""
    name = "stub"
    precision = "fp32"

    def __init__(self, input_size=(32, 48), max_batch=8, delay_s=0.0):
        self.device = torch.device("cpu")
        self.input_size = tuple(input_size)
        self.min_batch, self.max_batch = 1, max_batch
        self.class_names = list(CARLA_CLASSES)
        self.palette = np.asarray(CARLA_PALETTE, np.uint8)
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        red = frames[:, 0]
        return torch.where(red > 127, torch.tensor(ROAD, dtype=torch.uint8), torch.tensor(SKY, dtype=torch.uint8))
