"""Synthetic media and a stand-in backend, shared by the pipeline, live and reliability tests.

Every clip frame spells its index in binary in 6 vertical bands (red 255 = 1), and the stand-in backend
labels red pixels "road" (7) and the rest "sky" (13), so a label map tells which input frame it came
from: order and correspondence are checkable after a lossy round trip.
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

BITS = 6
ROAD, SKY = 7, 13


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """RGB frame whose BITS vertical bands spell ``i`` in binary (red 255 = 1), plus a moving ramp in green."""
    img = np.zeros((height, width, 3), np.uint8)
    band = max(1, width // BITS)
    for k in range(BITS):
        if i >> k & 1:
            img[:, k * band:(k + 1) * band, 0] = 255
    img[..., 1] = (np.arange(width)[None, :] * 2 + i * 9) % 200
    img[..., 2] = 60
    return img


def decode_index(labels: np.ndarray) -> int:
    """Read back the index from a label map (the majority label in the middle of each band)."""
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
                sample_aspect_ratio: Fraction | None = None,
                container_options: dict | None = None, gray: bool = False, noise: bool = False,
                audio: str | None = None, audio_layout: str = "mono") -> Path:
    """Encode ``frames`` test frames; ``pts`` (in ``time_base``) gives each its own timestamp (VFR);
    ``noise``: random pixels (frames that compress badly, to fill a disk); ``audio``: an audio encoder
    (aac, libopus, pcm_s16le ...) for a tone as long as the video."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        stream.options = ({"preset": "ultrafast", "crf": "10"} if codec == "libx264" else {}) | (options or {})
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        sound = container.add_stream(audio, rate=48000, layout=audio_layout) if audio else None
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
        if sound is not None:
            write_tone(container, sound, frames / rate)
    return path


def write_tone(container, stream, seconds: float, hz: float = 440.0) -> None:
    """A sine tone of ``seconds`` into an audio ``stream`` (48 kHz, any layout), in the encoder's frame size."""
    cc = stream.codec_context
    rate, fmt, layout, channels = 48000, cc.format, cc.layout.name, cc.layout.nb_channels
    size = cc.frame_size or 1024
    t = np.arange(round(seconds * rate)) / rate
    wave = np.repeat(0.3 * np.sin(2 * np.pi * hz * t)[None], channels, axis=0)        # (channels, samples)
    dtype = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64}[fmt.name[:3]]
    samples = (wave * np.iinfo(dtype).max if dtype in (np.int16, np.int32) else wave).astype(dtype)
    for start in range(0, samples.shape[1], size):
        chunk = samples[:, start:start + size]
        if not fmt.is_planar:                                  # packed: one row, channels interleaved
            chunk = chunk.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt.name, layout=layout)
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_clip(path: Path, frames: int = 12, width: int = 96, height: int = 64, rate: int = 25,
               codec: str = "libx264", options: dict | None = None, audio: str | None = None,
               audio_layout: str = "mono") -> Path:
    """A test clip, as PyAV's own tests write them (sizes rounded up to even for yuv420p)."""
    return write_video(path, frames, width + width % 2, height + height % 2, rate=rate, codec=codec, options=options,
                       audio=audio, audio_layout=audio_layout)


def probe(path: Path) -> dict:
    """Reopen a video: frame count, size, rate and each frame's pts (in seconds too)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        return {"frames": len(pts), "width": s.codec_context.width, "height": s.codec_context.height,
                "rate": s.average_rate, "time_base": s.time_base, "pts": pts,
                "seconds": [float(p * s.time_base) for p in pts], "codec": s.codec_context.name}


class StubBackend:
    """The engine.load contract, in a few lines: road where red > 127, sky elsewhere."""
    name = "stub"
    precision = "fp32"

    def __init__(self, input_size=(32, 48), max_batch=8, delay_s=0.0, fail_at=None, error=None):
        self.device = torch.device("cpu")
        self.input_size = tuple(input_size)
        self.max_batch = max_batch
        self.class_names = list(CARLA_CLASSES)
        self.palette = np.asarray(CARLA_PALETTE, np.uint8)
        self.delay_s, self.fail_at, self.error = delay_s, fail_at, error
        self.calls = 0
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        assert frames.dtype == torch.uint8 and frames.is_contiguous()
        assert tuple(frames.shape[1:]) == (3, *self.input_size), frames.shape
        assert 1 <= frames.shape[0] <= self.max_batch
        with self.lock:
            self.calls += 1
            self.batches.append(int(frames.shape[0]))
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise self.error or RuntimeError("stub backend exploded")
        if self.delay_s:
            time.sleep(self.delay_s)
        red = frames[:, 0]
        return torch.where(red > 127, torch.tensor(ROAD, dtype=torch.uint8), torch.tensor(SKY, dtype=torch.uint8))
