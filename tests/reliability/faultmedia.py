"""Media for the reliability tests, made on the spot with PyAV and NumPy: good clips in awkward shapes
(odd sizes, 4K, grayscale, 10-bit, variable frame rate, MJPEG, rotated) and broken ones (truncated,
corrupted packets, audio only). The clip writer, stand-in backend and probe are in tests/mediakit.py.

Every frame spells its index in binary in 6 vertical bands (red 255 = 1); the stand-in backend labels
red pixels "road", so a label PNG written with --masks tells which input frame it came from.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# the clips, the stand-in backend and probe are shared with the other test folders
from mediakit import ROAD, SKY, StubBackend, decode_index, frame_image, probe, write_video  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


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
