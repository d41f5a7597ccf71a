"""Fixtures for the scale-out tests: short clips cut from assets/sample.mp4, a corrupt one, and the
single-process reference run they are compared with (label PNGs are lossless: frame for frame)."""
from __future__ import annotations

from pathlib import Path

import av
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "sample.mp4"
CLIP_FRAMES = 12
STARTS = (0, 40, 80)              # three different stretches of the drive


def cut_clip(path: Path, start: int, frames: int = CLIP_FRAMES, size=(320, 240)) -> Path:
    """Frames ``start`` .. ``start + frames`` of the sample, as a new H.264 clip (PyAV's own loop)."""
    with av.open(str(SAMPLE)) as src, av.open(str(path), "w") as dst:
        stream = dst.add_stream("libx264", rate=20)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for i, frame in enumerate(src.decode(video=0)):
            if i >= start + frames:
                break
            if i >= start:
                img = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [cut_clip(folder / f"drive{k}.mp4", start) for k, start in enumerate(STARTS)]


@pytest.fixture(scope="session")
def long_clips(tmp_path_factory) -> list[Path]:
    """60 frames each: long enough that a worker can be killed mid-file."""
    folder = tmp_path_factory.mktemp("long")
    return [cut_clip(folder / f"long{k}.mp4", k * 10, frames=60) for k in range(3)]


@pytest.fixture(scope="session")
def corrupt(clips) -> Path:
    path = clips[0].parent / "corrupt.mp4"                     # beside the clips: outputs land flat
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\xde\xad\xbe\xef" * 4096)   # an MP4 header, then junk
    return path


@pytest.fixture(scope="session")
def config(tmp_path_factory) -> Path:
    """One intra-op thread and a fixed backend: the batch's workers and the reference compute alike."""
    path = tmp_path_factory.mktemp("config") / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"infer": {"backend": "onnxruntime", "torch_threads": 1}}))
    return path


@pytest.fixture(scope="session")
def reference(clips, config, tmp_path_factory) -> dict[str, Path]:
    """Each clip's label PNGs from a plain single-process ``run()``: {clip stem: masks folder}."""
    from pipeline.run import load_backend, run
    from pipeline.settings import load_settings

    settings = load_settings(config)
    backend = load_backend(settings)
    folder = tmp_path_factory.mktemp("reference")
    masks = {}
    for clip in clips:
        masks[clip.stem] = folder / clip.stem
        run(clip, folder / f"{clip.stem}.mp4", settings, masks=masks[clip.stem], backend=backend)
    return masks


def same_masks(got: Path, want: Path) -> None:
    """Frame for frame: the same file names and identical label PNG bytes' pixels."""
    import cv2
    import numpy as np

    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names and len(names) == CLIP_FRAMES
    for name in names:
        a = cv2.imread(str(got / name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(want / name), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape and np.array_equal(a, b), f"{got / name} differs from the single-process run"


@pytest.fixture
def check_masks():
    return same_masks
