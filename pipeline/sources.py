"""Where frames come from: a video file, a URL, a camera, or an image folder/glob.

``open_source(spec, decode_settings)`` classifies ``spec``, opens it (so a bad input fails before any
thread starts) and returns a source with ``info`` (size, frame rate, time base, length, live or not)
and ``frames()``, a generator of ``(index, pts, time_base, rgb)``:

- videos, URLs and cameras go through PyAV's own loop (``container.demux`` then ``packet.decode``,
  whose last, empty packet flushes the decoder) with threaded decoding;
- image folders and globs are read with OpenCV, in natural order, at ``decode.fps``.

Undecodable packets/images are skipped and counted in ``skipped``; a container that breaks mid-stream
(truncated file, dropped connection) ends the stream early and sets ``error``.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from train.errors import InputNotFoundError, InvalidInputError, MediaError

log = logging.getLogger("segpipe.pipeline")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
LIVE_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp"}
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


@dataclass(frozen=True)
class SourceInfo:
    kind: str                 # file | url | camera | images
    name: str
    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frames: int | None        # known length (None: live or unknown)
    live: bool


def open_source(spec, settings) -> "VideoSource | ImageSource":
    """Open ``spec``: an int or /dev/videoN (camera), URL, image folder, glob, or video/image file."""
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        return VideoSource(f"/dev/video{int(text)}", settings, kind="camera")
    if text.startswith("/dev/video"):
        return VideoSource(text, settings, kind="camera")
    if "://" in text:
        return VideoSource(text, settings, kind="url")
    path = Path(text)
    if any(c in text for c in "*?[") and not path.exists():
        files = natural_sorted(p for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTS)
        if not files:
            raise InputNotFoundError(f"no images match {text!r}: check the pattern (quote it so the shell "
                                     f"does not expand it), e.g. 'frames/*.jpg'")
        return ImageSource(files, text, settings)
    if path.is_dir():
        files = natural_sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise InvalidInputError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_EXTS))}): "
                                    f"pass a video file or a folder of frames")
        return ImageSource(files, text, settings)
    if not path.exists():
        raise InputNotFoundError(f"input {path} does not exist: pass a video file, image folder, glob, URL "
                                 f"or camera index")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageSource([text], text, settings)
    return VideoSource(text, settings, kind="file")


def natural_sorted(names) -> list[str]:
    """frame2.png before frame10.png."""
    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


class VideoSource:
    """A file, URL or camera, decoded by PyAV (FFmpeg)."""

    def __init__(self, url: str, settings, kind: str):
        self.url, self.kind = url, kind
        self.skipped = 0
        self.error: Exception | None = None
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        live = kind == "camera" or scheme in LIVE_SCHEMES
        options = {str(k): str(v) for k, v in (settings.options or {}).items()}
        fmt = settings.camera_format if kind == "camera" else None
        timeout = settings.timeout_s if kind != "file" else None
        try:
            self.container = av.open(url, format=fmt, options=options, timeout=timeout)
        except FileNotFoundError:
            if kind == "camera":
                raise InputNotFoundError(f"camera {url} does not exist: see which cameras there are with "
                                         f"`ls /dev/video*` (or v4l2-ctl --list-devices)") from None
            raise InputNotFoundError(f"input {url} does not exist: pass a video file, image folder, glob, "
                                     f"URL or camera index") from None
        except (av.FFmpegError, OSError) as e:
            hint = {"camera": "is the camera connected and free (not used by another program)?",
                    "url": "is the address right and the server reachable?"}.get(kind, "is it a video file?")
            raise MediaError(f"cannot open {url}: {e}; {hint}") from None
        if not self.container.streams.video:
            self.container.close()
            raise InvalidInputError(f"{url} has no video stream: pass a video (audio-only files are not "
                                    f"supported)")
        self.stream = stream = self.container.streams.video[0]
        stream.thread_type = settings.thread_type
        if settings.threads:
            stream.codec_context.thread_count = settings.threads
        cc = stream.codec_context
        if not cc.width or not cc.height:
            self.container.close()
            raise MediaError(f"{url}: the video stream does not say its size (is it damaged?)")
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(fps) if fps else Fraction(settings.fps).limit_denominator(1001)
        time_base = Fraction(stream.time_base) if stream.time_base else 1 / fps
        frames = int(stream.frames) or None                 # exact where the container says (MP4)
        if frames is None and not live:                     # else from the duration: for the ETA, and to
            seconds = None                                  # notice a file that ends early (truncated)
            if stream.duration:
                seconds = float(stream.duration * stream.time_base)
            elif self.container.duration and len(self.container.streams) == 1:
                seconds = self.container.duration / av.time_base
            frames = max(1, round(seconds * fps)) if seconds else None
        self.info = SourceInfo(kind, url, cc.width, cc.height, fps, time_base, frames, live)

    def frames(self):
        """PyAV's loop: demux, decode (the final empty packet flushes), convert to RGB at a fixed size."""
        w, h, tb = self.info.width, self.info.height, self.info.time_base
        step = max(1, round(1 / (self.info.fps * tb)))     # pts per frame, for frames that have none
        index = 0
        last_pts = None
        try:
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                except av.error.EOFError:
                    break
                except (av.error.InvalidDataError, av.error.UndefinedError, ValueError) as e:
                    self.skipped += 1
                    index += 1
                    log.warning("%s: skipped an undecodable packet (%s)", self.info.name, e)
                    continue
                for frame in decoded:
                    pts = frame.pts
                    if pts is None:
                        pts = 0 if last_pts is None else last_pts + step
                    last_pts = pts
                    yield index, pts, tb, frame.to_ndarray(format="rgb24", width=w, height=h)
                    index += 1
        except av.FFmpegError as e:          # the container itself broke: keep what decoded
            self.error = e
            log.warning("%s: input ended early after %d frames (%s)", self.info.name, index, e)
            return
        expected = self.info.frames
        if expected and not self.info.live and index < expected - max(3, expected // 20):
            self.error = f"the container promised about {expected} frames; is the file truncated?"
            log.warning("%s: ended after %d of about %d frames", self.info.name, index, expected)

    def close(self) -> None:
        self.container.close()


class ImageSource:
    """An ordered list of image files, read with OpenCV at a fixed frame rate."""

    def __init__(self, files: list[str], name: str, settings):
        self.files = files
        self.skipped = 0
        self.error = None
        first = None
        for f in files:
            first = self._read(f)
            if first is not None:
                break
        if first is None:
            raise InvalidInputError(f"none of the {len(files)} images in {name} could be read: are they images?")
        fps = Fraction(settings.fps).limit_denominator(1001)
        h, w = first.shape[:2]
        self.info = SourceInfo("images", name, w, h, fps, 1 / fps, len(files), False)

    @staticmethod
    def _read(path: str) -> np.ndarray | None:
        if _IMREAD_RGB is not None:
            return cv2.imread(path, _IMREAD_RGB)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def frames(self):
        w, h, tb = self.info.width, self.info.height, self.info.time_base
        for index, path in enumerate(self.files):
            img = self._read(path)
            if img is None:
                self.skipped += 1
                log.warning("skipped unreadable image %s", os.path.basename(path))
                continue
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            yield index, index, tb, img

    def close(self) -> None:
        pass
