"""Helpers for the pipeline tests: synthetic clips written with PyAV and a tiny stand-in backend.

The clips encode each frame's index in vertical bands (red 255 = bit set), and the stand-in backend
labels a pixel "road" (7) where red > 127 and "sky" (13) elsewhere, so a label PNG tells which input
frame it came from: order and correspondence are checkable after a lossy round trip.
"""
from __future__ import annotations

from pathlib import Path

from mediakit import (  # noqa: F401
    ROAD,
    SKY,
    StubBackend,
    decode_index,
    frame_image,
    probe,
    write_clip,
    write_video,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CARLA_VIDEO = SHARED / "videos" / "carla_drive.mp4"
