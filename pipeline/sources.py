"""Where frames come from: a video file, a URL, a camera, an image folder/glob, or the caller's arrays.

``open_source(spec, decode_settings)`` classifies ``spec``, opens it (so a bad input fails before any
thread starts) and returns a source with ``info`` (size, frame rate, time base, length, live or not)
and ``frames()``, a generator of ``(index, pts, time_base, rgb)``:

- videos, URLs and cameras go through PyAV's own loop (``container.demux`` then ``packet.decode``,
  whose last, empty packet flushes the decoder) with threaded decoding;
- image folders and globs are read with OpenCV, in natural order, at ``decode.fps``;
- arrays (``segment()`` in Python: an iterable of RGB frames) are taken as they come, at ``decode.fps``.

Undecodable packets/images are skipped and counted in ``skipped``, and so are frames missing from the
stream itself (a transport stream that lost packets: see ``PtsGaps``); a container that breaks mid-stream
(dropped connection), or a file that ends well before its container said (truncated), ends the stream
early and sets ``error``. A file that cannot be a video (empty, text, an MP4 cut before its index, no
video stream, no decodable frame) is refused at open with what to do. Frames come out upright: a
display-matrix rotation (phone videos) is applied, as players do. Non-square pixels are kept as stored, and
their shape (the sample aspect ratio) goes in ``info`` for the output to carry. An image folder or glob
holds images of one size (checked at open from their headers).
"""
from __future__ import annotations

import collections
import functools
import glob
import heapq
import io
import itertools
import logging
import multiprocessing.queues
import numbers
import os
import queue
import re
import stat
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from train.data import IMAGE_EXTENSIONS, decode_image
from train.errors import (InputNotFoundError, InvalidInputError, MediaError, SourceStalledError, UnreadableInputError,
                          plural)

log = logging.getLogger("segpipe.pipeline")

LIVE_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp"}
LOSSY_SCHEMES = {"rtsp", "rtsps", "udp", "rtp", "srt"}    # may carry media over datagrams: packets can be lost
PORT_NEEDED = {"udp", "tcp", "srt", "rtp"}    # no default port
FORMAT_SCHEMES = {"rtsp", "rtsps"}    # FFmpeg's RTSP demuxer/muxer takes these, not a protocol
TS_PACKET_SIZES = (188, 192, 204)     # MPEG-TS, M2TS (Blu-ray, AVCHD), TS with Reed-Solomon bytes (DVB)
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
MAX_SKIP_WARNINGS = 3      # undecodable packets listed one by one; the rest are counted
RECENT_INDICES = 64        # frames a damaged decoder may give out of order (their indices are kept unique)
QUEUE_POLL_S = 0.05        # a queue of the caller's frames is waited on in steps this long
PIL_HINT = "from PIL: np.asarray(image.convert('RGB'))"
MAX_GAP_S = 10.0           # a longer pts jump is a discontinuity (joined files), as FFmpeg's dts_delta_threshold


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
    path: str | None = None   # what FFmpeg opened (a file's sound is read from it); name is for messages
    sample_aspect_ratio: Fraction | None = None   # pixel width / height, upright (None: square pixels)


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?[") and not Path(text).exists()


def image_files(spec) -> list[str] | None:
    """The images of an image folder or glob, in natural order; None for any other input."""
    text = str(spec)
    if is_glob(text):
        return natural_sorted(p for p in glob.glob(text, recursive=True)
                              if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    if Path(text).is_dir():
        return natural_sorted(str(p) for p in Path(text).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return None


def open_source(spec, settings) -> "VideoSource | ImageSource | ArraySource":
    """Open ``spec``: an int or /dev/videoN (camera), URL, image folder, glob, video/image file, - (standard
    input: a pipe from ffmpeg or a camera tool), or RGB arrays (see ArraySource). ``settings``: the decode
    settings (``load_settings().decode``; the whole of them is taken too)."""
    settings = getattr(settings, "decode", settings)
    if is_arrays(spec):
        return ArraySource(spec, settings)
    if not isinstance(spec, (str, numbers.Integral, os.PathLike)):
        hint = f" ({PIL_HINT})" if type(spec).__module__.startswith("PIL") else ""
        raise InvalidInputError(f"{type(spec).__name__} is not a source: pass a path, URL or camera index, or "
                                f"(H, W, 3) uint8 RGB arrays{hint}")
    text = str(spec)
    if text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            what = "closed" if sys.stdin is None else "this terminal"
            raise InvalidInputError(f"- reads standard input, and that is {what}: pipe a video in, e.g. "
                                    f"ffmpeg -i in.mov -f mpegts - | segpipe run - --out seg.mp4")
        return VideoSource("/dev/stdin", settings, kind="file", name="standard input")
    if isinstance(spec, int) or text.isdigit():
        return VideoSource(f"/dev/video{int(text)}", settings, kind="camera")
    if text.startswith("/dev/video"):
        return VideoSource(text, settings, kind="camera")
    if "://" in text:
        return VideoSource(text, settings, kind="url")
    path = Path(text)
    files = image_files(text)
    if is_glob(text):
        if not files:
            raise InputNotFoundError(f"no images match {text!r}: check the pattern (quote it so the shell "
                                     f"does not expand it), e.g. 'frames/*.jpg'")
        return ImageSource(files, text, settings)
    if path.is_dir():
        if not files:
            folders = sorted((d for d in path.iterdir() if d.is_dir()), key=lambda d: ("mask" in d.name.lower(), d.name))
            inner = next((d for d in folders if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir())),
                         None)                    # e.g. a CARLA folder: CameraRGB/, not CameraMask/
            videos = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
            hint = (f"did you mean {inner}?" if inner else
                    f"to segment the {plural(len(videos), 'file')} in it (videos?) each to its own output, pass "
                    f"--out-dir DIR instead of --out" if videos else "pass a video file or a folder of frames")
            raise InvalidInputError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                                    f"{hint}")
        return ImageSource(files, text, settings)
    if not path.exists():
        raise InputNotFoundError(f"input {path} does not exist: pass a video file, image folder, glob, URL "
                                 f"or camera index")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource([text], text, settings)
    return VideoSource(text, settings, kind="file")


def is_arrays(spec) -> bool:
    """Frames in memory (an array, an iterable or a queue of them), not a name of a source."""
    return isinstance(spec, np.ndarray) or is_queue(spec) or hasattr(spec, "__iter__") and not isinstance(
        spec, (str, bytes, bytearray, memoryview, os.PathLike, io.IOBase))


@functools.cache
def has_protocol(scheme: str) -> bool:
    """Whether this FFmpeg build has the ``scheme``:// protocol (SRT needs libsrt, for one). Nothing is
    sent or read: FFmpeg looks the protocol up before it checks a whitelist, and this one allows none."""
    try:
        av.open(f"{scheme}://", format="mpegts", options={"protocol_whitelist": "none"}).close()
    except av.ProtocolNotFoundError:
        return False
    except (av.FFmpegError, OSError, ValueError):    # found, and refused by the whitelist
        pass
    return True


def check_protocol(url: str, verb: str) -> None:
    """Refuse, before any work, a URL whose protocol this FFmpeg build lacks (``verb``: open, stream to),
    or whose port is not one (FFmpeg would take udp://host:99999 as port 34463)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in FORMAT_SCHEMES and not has_protocol(scheme):
        raise InvalidInputError(f"cannot {verb} {url}: this FFmpeg build (PyAV's, FFmpeg {av.ffmpeg_version_info}) "
                                f"has no {scheme}:// protocol: use udp:// or rtsp:// instead, or a PyAV built on an "
                                f"FFmpeg that has it (pip install av --no-binary av)")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:                  # an unclosed [IPv6 bracket
        raise InvalidInputError(f"cannot {verb} {url}: not a valid URL ({e}): write it like "
                                f"{scheme}://127.0.0.1:5000 or {scheme}://[::1]:5000") from None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port == -1 or port == 0 and verb != "open" or port is None and scheme in PORT_NEEDED:
        host = parts.hostname or "127.0.0.1"
        user = parts.netloc.rpartition("@")[0]
        netloc = (f"{user}@" if user else "") + (f"[{host}]" if ":" in host else host) + ":5000"
        example = parts._replace(netloc=netloc).geturl()
        raise InvalidInputError(f"cannot {verb} {url}: {'it names no port' if port is None else 'its port is not 1..65535'}"
                                f": name one, e.g. {example}")


def natural_sorted(names) -> list[str]:
    """frame2.png before frame10.png."""
    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


class VideoSource:
    """A file, URL or camera, decoded by PyAV (FFmpeg).

    A file (or a URL that is not a live stream) is checked at open: an empty file, one FFmpeg cannot
    read, an MP4 cut before its index, or one whose first frame does not decode fails here, before any
    thread starts. Its first frame is decoded then, so its display rotation is known: frames come out
    upright (a phone's portrait video, stored landscape with a 90 degree display matrix, is turned as
    players turn it; flips in the matrix are ignored) and ``info`` has the upright size.
    """

    def __init__(self, url: str, settings, kind: str, name: str | None = None):
        self.url, self.kind = url, kind
        name = name or url                       # what messages call it
        self.undecodable = 0        # packets that did not decode (their frames are missing from the output)
        self.withheld = 0           # frames the decoder did not give back after damage (see ``skipped``)
        self.lost = 0               # frames missing from the stream itself: no packet came (see ``PtsGaps``)
        self.damaged = 0            # frames FFmpeg decoded but flagged corrupt (kept: concealed errors)
        self.packets = 0            # video packets read
        self.error: Exception | str | None = None
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        live = kind == "camera" or scheme in LIVE_SCHEMES
        options = {str(k): str(v) for k, v in (settings.options or {}).items()}
        fmt = settings.camera_format if kind == "camera" else None
        timeout = self._timeout = settings.timeout_s if kind != "file" else None
        if kind == "file":
            check_readable(Path(url), name)
        if scheme:
            check_protocol(url, "open")
        try:
            self.container = av.open(url, format=fmt, options=options, timeout=timeout)
        except FileNotFoundError:
            if kind == "camera":
                raise InputNotFoundError(f"camera {url} does not exist: see which cameras there are with "
                                         f"`ls /dev/video*` (or v4l2-ctl --list-devices)") from None
            raise InputNotFoundError(f"input {url} does not exist: pass a video file, image folder, glob, "
                                     f"URL or camera index") from None
        except av.ExitError:                     # FFmpeg gave up waiting: the timeout's interrupt
            hint = ("is the camera connected and free?" if kind == "camera" else
                    "is the sender running, and sending to this address and port?")
            raise MediaError(f"nothing arrived from {name} within {timeout:g} s (decode.timeout_s): {hint} "
                             f"(if it is only slow to start, raise decode.timeout_s)") from None
        except (av.FFmpegError, OSError) as e:
            if kind == "file":
                raise UnreadableInputError(unreadable_file(Path(url), e, name)) from None
            if isinstance(e, av.error.HTTPClientError) and not isinstance(e, av.error.HTTPTooManyRequestsError):
                wrong = InputNotFoundError if isinstance(e, av.error.HTTPNotFoundError) else InvalidInputError
                raise wrong(f"cannot open {name}: {e.strerror or e}; check the address (and any credentials "
                            f"it needs)") from None          # the input's fault: a retry would get the same
            hint = {"camera": "is the camera connected and free (not used by another program)?",
                    "url": "is the address right and the server reachable?"}.get(kind, "is it a video file?")
            raise MediaError(f"cannot open {name}: {getattr(e, 'strerror', None) or e}; {hint}") from None
        if not self.container.streams.video:
            what = "audio-only" if self.container.streams.audio else "without a video stream"
            self.container.close()
            raise InvalidInputError(f"{name} has no video stream ({what}): pass a video; audio-only files "
                                    f"cannot be segmented")
        self.stream = stream = self.container.streams.video[0]
        stream.thread_type = settings.thread_type
        if settings.threads:
            stream.codec_context.thread_count = settings.threads
        cc = stream.codec_context
        if not cc.width or not cc.height:
            self.container.close()
            raise MediaError(f"{name}: the video stream does not say its size (is it damaged?)")
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(fps) if fps else Fraction(settings.fps).limit_denominator(1001)
        time_base = Fraction(stream.time_base) if stream.time_base else 1 / fps
        self.exact_frames = int(stream.frames) or None       # what the container says (MP4), if it does
        self._step = 1 / (fps * time_base)                   # pts per frame, exactly
        mov = is_mov(self.container)
        # only a transport stream or a datagram protocol loses packets on the way; elsewhere (an MKV made
        # with frames left out, a camera's clock) a pts gap is the video's own timing
        lossy = self.container.format.name == "mpegts" or scheme in LOSSY_SCHEMES
        self._gaps = PtsGaps(self._step, time_base) if lossy and not mov else None
        if self._gaps is not None and stream.start_time is not None:   # frames probing read and did not keep
            self._gaps.add(stream.start_time - round(self._step))      # (fflags nobuffer, as live sets) count
        self._interlaced = False
        frames = self.exact_frames
        self.duration_s = promised_seconds(self.container, stream)  # for noticing a file that ends early
        if frames is None and not live and self.duration_s:  # for the progress bar's ETA
            frames = max(1, round(self.duration_s * fps))
        self._decoded = self._decode()
        self._first = None
        self.rotation = 0
        self.coded_size = (cc.width, cc.height)
        width, height = cc.width, cc.height
        if not live:                                         # the first frame: it decodes, and its rotation
            self._first = next(self._decoded, None)
            if self._first is None:
                self.container.close()
                if mov and is_pipe(url):                 # not damaged: its index is where a pipe cannot go
                    raise UnreadableInputError(
                        f"cannot open {name}: an MP4/MOV read from a pipe needs its index (the moov atom) "
                        f"first, and a pipe cannot seek to one at the end: pass the file's path instead, or "
                        f"pipe MPEG-TS: ffmpeg -i in.mp4 -c copy -f mpegts - | segpipe run - --out seg.mp4")
                why = f"{self.undecodable} undecodable packet(s)" if self.undecodable else (self.error or "no frames")
                if mov and scheme in ("http", "https") and not self.undecodable:
                    raise UnreadableInputError(
                        f"cannot open {name}: not one frame could be read ({why}): an MP4/MOV over HTTP needs "
                        f"a server that can seek (range requests) unless its index (the moov atom) comes first: "
                        f"serve it from one that can, or move the index: ffmpeg -i in.mp4 -c copy -movflags "
                        f"+faststart out.mp4")
                raise UnreadableInputError(f"cannot open {name}: not one frame could be decoded ({why}): the "
                                           f"video is damaged or empty; get it again or re-export it")
            self.rotation = round(self._first.rotation / 90) % 4 * 90 if self._first.rotation else 0
            if self.rotation in (90, 270):
                width, height = height, width
        sar = stream.sample_aspect_ratio            # None or 0 where the video does not say: square
        sar = Fraction(sar) if sar and sar != 1 else None
        if sar and self.rotation in (90, 270):      # a turned pixel's width is its height
            sar = 1 / sar
        self.info = SourceInfo(kind, name, width, height, fps, time_base, frames, live, path=url,
                               sample_aspect_ratio=sar)

    @property
    def skipped(self) -> int:
        """Frames of the source missing from the output: undecodable packets, the frames the decoder could
        not rebuild (H.264 holds back frames that refer to a damaged one), and frames the stream lost."""
        return self.undecodable + self.withheld + self.lost

    def _decode(self):
        """PyAV's loop: demux, decode (the final empty packet flushes). A damaged packet is skipped and
        counted; a container that breaks ends the stream and sets ``error``."""
        try:
            for packet in self.container.demux(self.stream):
                if packet.size and not packet.is_discard:     # discarded: before an edit list's start, never shown
                    self.packets += 1
                    if self._gaps is not None and packet.pts is not None:
                        self._gaps.add(packet.pts)
                        self.lost = self._gaps.lost
                try:
                    decoded = packet.decode()
                except av.error.EOFError:
                    return
                except (av.error.InvalidDataError, av.error.UndefinedError, ValueError) as e:
                    self.undecodable += 1
                    level = logging.WARNING if self.undecodable <= MAX_SKIP_WARNINGS else logging.DEBUG
                    log.log(level, "%s: skipped an undecodable packet (%s)%s", self.url, e,
                            "; further ones are counted, not listed" if self.undecodable == MAX_SKIP_WARNINGS
                            else "")
                    continue
                for frame in decoded:
                    if frame.is_corrupt:
                        self.damaged += 1
                    yield frame
        except av.FFmpegError as e:          # the container itself broke, or a stream went quiet: keep what
            self.error = e                   # decoded, and what the decoder still holds (B-frames wait there)
            if isinstance(e, av.ExitError) and self._timeout:
                self.error = (f"nothing arrived for {self._timeout:g} s (decode.timeout_s): the sender stopped "
                              f"or the network dropped")
            try:
                for frame in self.stream.codec_context.decode(None):
                    self.damaged += frame.is_corrupt
                    yield frame
            except av.FFmpegError:
                pass

    def frames(self):
        """Frames as RGB at a fixed (upright) size, with their pts; frames without one get the last + 1/fps.

        Each frame's index is its place in the source: where frames can be missing (lost frames are counted:
        MPEG-TS and datagram protocols; or packets did not decode) and the pts stay on the frame grid, its pts
        tells it, so frames missing before it leave their numbers unused (also when a damaged stream's
        decoder gives frames out of order); otherwise it is its order plus the frames skipped so far.

        At the end of the stream (the decoder flushed), every packet should have given a frame: those that
        did not are counted, and so are the frames whose packets never came (``PtsGaps``)."""
        (cw, ch), tb, k = self.coded_size, self.info.time_base, self.rotation // 90
        per_frame = self._step
        step = max(1, round(per_frame))                     # pts per frame, for frames that have none
        grid = PtsGaps(per_frame, tb)                       # its tolerance and largest gap (pts), as for lost frames
        max_skip = MAX_GAP_S * self.info.fps                # the largest gap in frames
        n, first_pts, last_pts, max_pts = 0, None, None, None
        regular = True                  # pts on one frame grid (constant rate): they can give the index
        base, top, recent = 0, -1, collections.deque(maxlen=RECENT_INDICES)
        decoded = self._decoded if self._first is None else itertools.chain([self._first], self._decoded)
        self._first = None
        for frame in decoded:
            pts = frame.pts
            if pts is None:
                pts = 0 if last_pts is None else last_pts + step
            if first_pts is None:
                # frames before this one that did not decode (gaps the read-ahead saw come after it)
                first_pts, base, self._interlaced = pts, self.undecodable, bool(frame.interlaced_frame)
            elif regular and pts > max_pts:             # (a damaged stream's decoder may give some late)
                delta = pts - max_pts
                if frame_steps(delta, per_frame, grid.tolerance) is None or delta > grid.max_gap:
                    regular = False     # off the frame grid (variable frame rate), or a discontinuity
            by_pts = regular and (self._gaps is not None or self.undecodable)   # where frames can be missing
            index = base + round((pts - first_pts) / per_frame) if by_pts else None
            if index is None or index in recent or not top - RECENT_INDICES < index <= top + max_skip:
                index = max(top + 1, n + self.skipped)      # by order (also after a pts discontinuity)
            recent.append(index)
            top = max(top, index)
            max_pts = pts if max_pts is None else max(max_pts, pts)
            last_pts = pts
            n += 1
            if self.undecodable:                           # frames after damage the decoder did not give back
                self.withheld = max(self.withheld, top + 1 - n - self.undecodable - self.lost)
            image = frame.to_ndarray(format="rgb24", width=cw, height=ch)
            if k:
                image = np.ascontiguousarray(np.rot90(image, k))   # counter-clockwise, as the matrix says
            yield index, pts, tb, image
        self._account(n)                  # also after an error: the decoder was flushed (``_decode``)
        if self.error is not None:
            log.warning("%s: input ended early after %d frames (%s)", self.info.name, n, self.error)
            return
        if not self.info.live:
            self._check_complete(n, first_pts, max_pts)

    def _account(self, n: int) -> None:
        """At the end of the stream, the frames missing from the ``n`` that came out: packets that gave no
        frame (the decoder is flushed, so none is still inside), and frames that had no packet."""
        if self._gaps is not None:
            self._gaps.finish()
            self.lost = self._gaps.lost
            if self._gaps.jump_s:
                log.warning("%s: its timestamps jump ahead by %.1f s (joined recordings, or a long outage?): "
                            "frames missing there, if any, are not counted", self.info.name, self._gaps.jump_s)
        decodable = self.packets - self.undecodable
        if self._interlaced and decodable > 1.5 * n:      # one packet per field (H.264 PAFF, MPEG-2 fields)
            decodable //= 2
        self.withheld = max(0, decodable - n)
        if self.skipped:
            log.debug("%s: %d frames out, %d packets: %d undecodable, %d not given back, %d lost in the stream",
                      self.info.name, n, self.packets, self.undecodable, self.withheld, self.lost)

    def _check_complete(self, n: int, first_pts, last_pts) -> None:
        """A file that ends well before what its container promised was cut short (truncated). MPEG-TS
        promises no length, but it is a sequence of whole packets: a file that ends inside one was cut."""
        read = n + self.skipped
        if self.container.format.name == "mpegts":
            size = self.container.size                  # 0 or an error code for a pipe or a stream
            if size > 0 and all(size % packet for packet in TS_PACKET_SIZES):
                self.error = ("it ends inside a transport packet (MPEG-TS is whole 188-byte packets); "
                              "is the file truncated?")
        elif self.exact_frames:
            if read < self.exact_frames - max(2, self.exact_frames // 50):
                self.error = f"the container promised {self.exact_frames} frames; is the file truncated?"
        elif self.duration_s and last_pts is not None:
            seen = float((last_pts - first_pts) * self.info.time_base) + float(1 / self.info.fps)
            if seen < self.duration_s - max(3 / float(self.info.fps), 0.05 * self.duration_s):
                self.error = (f"it stopped at {seen:.1f} s of the {self.duration_s:.1f} s its container "
                              f"promised; is the file truncated?")
        if self.error is not None:
            log.debug("%s: ended after %d frames: %s", self.info.name, n, self.error)

    def close(self) -> None:
        try:
            self._decoded.close()
        except ValueError:                   # still running in a thread abandoned as stuck: leave it
            return
        self.container.close()


class PtsGaps:
    """Frames missing from a constant-rate stream, from the gaps in its packets' pts: frames whose packets
    never came (a transport stream that lost packets on the way; its decoder sees nothing to fail on).

    Packets come in decode order (a B-frame after the frames it refers to), so their pts are put back in
    order in a small window first. Nothing is counted for a stream that is not constant-rate: one whose
    pts leave the frame grid (variable frame rate), or whose jumps are not rare among single steps (a
    steady rate has at least 4 steps per jump). A jump back, or ahead by more than MAX_GAP_S (a
    discontinuity: joined recordings), is not a gap."""

    WINDOW = 16                 # B-frame reordering is shallower than this (x264's pyramid: a few frames)

    def __init__(self, step: Fraction, time_base: Fraction):
        self.step, self.time_base = step, time_base
        self.max_gap = MAX_GAP_S / time_base
        self.tolerance = max(1, step / 10)
        self._window: list[int] = []
        self._last = None
        self.regular = True
        self.steps = self.jumps = 0         # deltas of one frame, and of more (frames missing in between)
        self.missing = 0                    # frames in those jumps
        self.jump_s = 0.0                   # the longest discontinuity ahead (s)

    @property
    def lost(self) -> int:
        return self.missing if self.regular and self.steps >= 4 * self.jumps else 0

    def add(self, pts: int) -> None:
        if self._window and pts < self._window[0] - self.WINDOW * self.step:   # a jump back: a new stretch
            self.finish()
            self._last = None
        heapq.heappush(self._window, pts)
        if len(self._window) > self.WINDOW:
            self._next(heapq.heappop(self._window))

    def finish(self) -> None:
        while self._window:
            self._next(heapq.heappop(self._window))

    def _next(self, pts: int) -> None:
        last = self._last
        if last is not None and 0 <= last - pts <= self.WINDOW * self.step:   # a repeat, or later than the window
            return
        self._last = pts
        if last is None or not self.regular or pts < last:       # the first, or a jump back (a discontinuity)
            return
        delta = pts - last
        if delta > self.max_gap:
            self.jump_s = max(self.jump_s, float(delta * self.time_base))
            return
        frames = frame_steps(delta, self.step, self.tolerance)
        if frames is None:
            self.regular = False
        elif frames == 1:
            self.steps += 1
        else:
            self.jumps += 1
            self.missing += frames - 1


def frame_steps(delta, step, tolerance) -> int | None:
    """How many frames of ``step`` a pts ``delta`` spans (1: the next frame), or None off the frame grid."""
    frames = round(delta / step)
    return frames if frames >= 1 and abs(delta - frames * step) <= tolerance else None


def is_mov(container) -> bool:
    """MP4/MOV (and their kin): FFmpeg's mov demuxer."""
    name = container.format.name
    return "mp4" in name or "mov" in name


def is_pipe(path: str) -> bool:
    """A pipe or socket (standard input from another program): it cannot seek."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def shown_size(path: str) -> tuple[int, int] | None:
    """An image's (width, height) as OpenCV reads it (turned by its EXIF orientation), from its header
    alone; None if it cannot be read."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Orientation: a quarter turn (Pillow has already turned a TIFF's size itself)
            turned = img.format != "TIFF" and img.getexif().get(0x0112) in (5, 6, 7, 8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (h, w) if turned else (w, h)


def check_readable(path: Path, name: str | None = None) -> None:
    """Fail clearly, before FFmpeg does, for a file that cannot be a video (``name``: what to call it)."""
    name = name or path
    try:
        st = path.stat()
    except OSError:
        return                                   # av.open says what is wrong
    if not stat.S_ISREG(st.st_mode):             # a pipe or a device: nothing to check before reading
        return
    if st.st_size == 0:
        raise UnreadableInputError(f"cannot open {name}: it is empty (0 bytes): an interrupted download or copy? "
                                   f"get the file again")
    if not os.access(path, os.R_OK):
        raise UnreadableInputError(f"cannot open {name}: permission denied: check its permissions")


def unreadable_file(path: Path, error: Exception, name: str | None = None) -> str:
    """Why FFmpeg could not open a local file (``name``: what to call it), and what to do about it."""
    name = name or path
    reason = getattr(error, "strerror", None) or str(error)
    if not path.is_file():
        return f"cannot open {name}: {reason}; is it a video?"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"cannot read {name}: {e.strerror}"
    if len(head) >= 8 and head[4:8] == b"ftyp" and not _has_moov(path):
        return (f"cannot open {name}: it is an MP4/MOV cut short, without its index (the moov atom, written "
                f"last), so not one frame can be read: it is truncated (an interrupted download, copy or "
                f"recording); get the file again")
    text = head.decode("utf-8", errors="replace")
    if head and sum(c.isprintable() or c in "\r\n\t" for c in text) > 0.95 * len(text):
        start = " ".join(text.split())[:40]
        return (f"cannot open {name}: it is text, not a video (it starts with {start!r}): a saved error page "
                f"or a renamed file? pass a real video file")
    return (f"cannot open {name}: it is not a video FFmpeg can read ({reason}): is it a video file, and "
            f"complete? try it in a player, or get it again")


def _has_moov(path: Path) -> bool:
    """Whether an ISO-BMFF file has a top-level 'moov' box (its index)."""
    try:
        with open(path, "rb") as f:
            size_total = os.fstat(f.fileno()).st_size
            pos = 0
            while pos + 8 <= size_total:
                f.seek(pos)
                header = f.read(16)
                size, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if kind == b"moov":
                    return True
                if size == 1 and len(header) >= 16:
                    size = int.from_bytes(header[8:16], "big")
                elif size == 0:
                    return False
                if size < 8:
                    return False
                pos += size
    except OSError:
        pass
    return False


def promised_seconds(container, stream) -> float | None:
    """How long the container says the video lasts: the stream's own duration (MP4), Matroska's
    per-track DURATION tag (kept at the file's start, so a cut file still has it), or the file's
    duration when the video is its only stream."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper().startswith("DURATION")), "")  # or DURATION-eng
    h, _, rest = tag.partition(":")
    m, _, sec = rest.partition(":")
    try:
        end = int(h) * 3600 + int(m) * 60 + float(sec)         # where the track ends, not its length
        return end - float((stream.start_time or 0) * stream.time_base)
    except ValueError:
        pass
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


class ImageSource:
    """An ordered list of image files of one size, read with OpenCV at a fixed frame rate. The sizes are
    checked at open from the files' headers: a video holds one size, and a mask must line up with its
    image, so an image of another size is refused (stretching it would distort it and its mask)."""

    def __init__(self, files: list[str], name: str, settings):
        self.files = files
        self.skipped = 0            # images that could not be read (counted, reported)
        self.error = None
        first = None
        for path in files:
            first = self._read(path)
            if first is not None:
                break
        if first is None:
            raise InvalidInputError(
                f"{name} could not be read as an image: is it damaged, or not an image?" if len(files) == 1
                else f"none of the {len(files)} images in {name} could be read: are they images?")
        fps = Fraction(settings.fps).limit_denominator(1001)
        h, w = first.shape[:2]
        self.info = SourceInfo("images", name, w, h, fps, 1 / fps, len(files), False)
        self._first_name = os.path.basename(path)
        for f in files:
            size = shown_size(f)
            if size is not None and size != (w, h):     # None: unreadable, skipped when its turn comes
                raise InvalidInputError(self._odd_size(f, size))

    def _odd_size(self, path: str, size: tuple[int, int]) -> str:
        w, h = self.info.width, self.info.height
        turned = " (turned: a photo's EXIF orientation?)" if size == (h, w) else ""
        return (f"{path} is {size[0]}x{size[1]} but the first image, {self._first_name}, is "
                f"{w}x{h}{turned}: pass images of one size (resize them first, or segment each size separately)")

    @staticmethod
    def _read(path: str) -> np.ndarray | None:
        img = decode_image(path, _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
        return img if img is None or _IMREAD_RGB is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def frames(self):
        w, h, tb = self.info.width, self.info.height, self.info.time_base
        for index, path in enumerate(self.files):
            img = self._read(path)
            if img is None:
                self.skipped += 1
                log.warning("skipped %s: not a readable image (damaged or cut short?)", os.path.basename(path))
                continue
            if img.shape[:2] != (h, w):      # its header said otherwise (checked at open)
                raise InvalidInputError(self._odd_size(path, img.shape[1::-1]))
            yield index, index, tb, img

    def close(self) -> None:
        pass


class ArraySource:
    """Frames the caller already has (a simulator, a ROS topic, a capture library): an iterable of
    (H, W, 3) uint8 RGB arrays, one array, an (N, H, W, 3) stack, or a ``queue.Queue`` that a producer
    fills (``None`` put in it ends the frames). They are numbered in order at ``decode.fps`` and taken in
    the decode thread as the pipeline wants them, not copied: an array must stay unchanged until its frame
    comes out (copy it if your producer reuses its buffer). The iterable is the caller's: it is not closed
    here. A queue is waited on in short steps, so a run stopped while it is empty takes no frame from it
    afterwards, and a queue that stays empty for ``decode.stall_timeout_s`` is a stalled source.

    A failure of the caller's iterable, or a frame that is not an RGB image of the first one's size, ends
    the frames: those before it go through, then it is raised (``error``)."""

    NAME = "your frame iterable"

    def __init__(self, arrays, settings):
        if isinstance(arrays, np.ndarray):
            if arrays.ndim == 3:
                arrays = arrays[None]
            if arrays.ndim != 4:
                raise InvalidInputError(f"a {arrays.dtype} array of shape {arrays.shape} is not frames: pass one "
                                        f"(H, W, 3) uint8 RGB array, an (N, H, W, 3) stack, or an iterable of "
                                        f"(H, W, 3) arrays")
        self.skipped, self.error = 0, None       # as the other sources: nothing is ever skipped here
        self.stop = threading.Event()            # the pipeline's stop event, handed in when it is wired
        self._timeout = settings.stall_timeout_s or None
        self._arrays = self._from_queue(arrays) if is_queue(arrays) else iter(arrays)
        first = next(self._arrays, _NONE)
        if first is _NONE:
            raise InvalidInputError("no frames: pass (H, W, 3) uint8 RGB arrays")
        self._first = self._checked(first, 0, None)
        h, w = self._first.shape[:2]
        fps = Fraction(settings.fps).limit_denominator(1001)
        length = len(arrays) if hasattr(arrays, "__len__") else None
        self.info = SourceInfo("arrays", self.NAME, w, h, fps, 1 / fps, length, False)

    def _from_queue(self, frames):
        """The queue's frames until ``None``, waited for in steps of ``QUEUE_POLL_S`` while the pipeline
        runs. The stall timeout is kept here for the first frame; the decode stage watches the rest."""
        timeout, since = self._timeout, time.monotonic()
        while not self.stop.is_set():
            try:
                item = frames.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                if timeout and time.monotonic() - since > timeout:
                    raise SourceStalledError(f"your queue gave no frame for {timeout:g} s: put (H, W, 3) uint8 "
                                             f"RGB arrays in it (None ends them), or raise "
                                             f"decode.stall_timeout_s (0 waits forever)") from None
                continue
            if item is None:
                return
            timeout = None
            yield item

    @staticmethod
    def _checked(image, index: int, size) -> np.ndarray:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            what = (f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                    else "None" if image is None else f"a {type(image).__name__}")
            if isinstance(image, (str, os.PathLike)):
                hint = "one source per call: a path, folder or glob goes in alone, not in a list"
            elif type(image).__module__.startswith("torch"):
                hint = "from a torch tensor: t.permute(1, 2, 0).cpu().numpy()"
            elif type(image).__module__.startswith("PIL"):
                hint = PIL_HINT
            elif image is None:
                hint = "cv2.imread gives None for a file it cannot read"
            else:
                hint = "from OpenCV: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)"
            raise InvalidInputError(f"frame {index} is {what}: pass (H, W, 3) uint8 RGB arrays ({hint})")
        if size is not None and image.shape[:2] != size:
            raise InvalidInputError(f"frame {index} has shape {image.shape} but the first had {(*size, 3)}: pass "
                                    f"frames of one size (resize them, or segment each size separately)")
        return np.ascontiguousarray(image)

    def frames(self):
        size, tb = (self.info.height, self.info.width), self.info.time_base
        first, self._first = self._first, None
        yield 0, 0, tb, first
        try:
            for index, image in enumerate(self._arrays, 1):
                yield index, index, tb, self._checked(image, index, size)
        except Exception as e:  # noqa: BLE001 - the caller's: raised after the frames before it
            self.error = e

    def close(self) -> None:
        pass


def is_queue(spec) -> bool:
    return isinstance(spec, (queue.Queue, queue.SimpleQueue, multiprocessing.queues.Queue))


_NONE = object()      # the end of an iterable (None may be a frame: a failed cv2.imread)
