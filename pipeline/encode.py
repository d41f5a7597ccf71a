"""Encode: PyAV's own loop, ``stream.encode(frame)`` then ``mux``, and a final ``stream.encode()`` to flush.

H.264 (libx264, yuv420p) by default (``codec="auto"``: VP9 for .webm, which cannot hold H.264). Each frame keeps its source pts and time base, so the output has
the input's timing and frame rate. AVI (a fixed-rate container) and encoders that cannot hold the source's
time base (mpeg4: denominators up to 65535, not a TS's 1/90000) get one tick per frame (1/fps) instead, the
pts rescaled into it. Where the input's timestamps go back (files joined end to end, a looped file), the
output continues them one frame after the last, with a warning; a single frame that comes late (a damaged
stream's decoder) goes just after the last, and the frames after it keep their times. Sizes a chroma-subsampled format cannot
hold (odd width or height for yuv420p) are padded by one row/column (edge replicated).

- Checked at construction (before any thread starts): the extension names a container FFmpeg can
  write, the container can hold the codec, and the encoder opens with these settings (a probe file in
  a temporary folder), so a typo in --out, --codec or encode.* fails first, in one line.
- ``teardown`` flushes and closes even after an error or a stop, so whatever was written stays playable.
- MP4 and MOV keep their index at the end, so a run killed before it (SIGKILL, out of memory, power
  loss, a full disk) would leave nothing playable. With H.264 (the default) they are written in FFmpeg's
  hybrid fragmented mode instead: self-contained fragments of ``fragment_s`` seconds reach the disk as they
  are made, and a clean close turns the file into an ordinary MP4 in place. A killed run keeps all but its
  last fragment. (Other codecs are written in one piece: FFmpeg 8.1 fails on some HEVC fragments.)
- The input file's sound is copied as it is (``audio``: its path; see pipeline/audio.py) where the
  container can hold it (tried on the probe file too); where it cannot, the output is silent and a
  warning says why. ``sound`` says which, for the statistics.
- The output file is locked (an advisory ``flock``) from the moment it is opened until it is closed: a second
  segpipe writing the same file is refused before it starts (or, if both start at once, when it opens the file),
  instead of both ending well with one run's frames in a file that both claim.
- A write that fails (disk full, I/O error) is a MediaError that says so. An output that holds no frame,
  or no frame that plays, is removed: an output file that exists is always playable. ``kept`` says how
  many frames a failed file still holds.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.codec.codec import Capabilities

from pipeline.audio import AudioCopy
from pipeline.stage import Stage
from train.data import IMAGE_EXTENSIONS
from train.errors import InvalidInputError, MediaError

try:
    import fcntl
except ImportError:                     # Windows: no advisory locks, outputs are not locked
    fcntl = None

log = logging.getLogger("segpipe.pipeline")
AUTO_CODECS = {".webm": "libvpx-vp9"}           # codec "auto": H.264, except where the container cannot hold it
IMAGE_SUFFIXES = {*IMAGE_EXTENSIONS, ".gif"}      # not videos: --out x.png writes an image
CODEC_DEFAULTS = {                # encoders whose defaults suit neither live video nor a quiet log
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1",   # ~4 CPU-ms/frame at 640x480
                   "lag-in-frames": "0"},                                   # a packet per frame, like zerolatency
    "libx265": {"x265-params": "log-level=error"},                          # not 40 info lines per file
}
CODEC_ENVIRONMENT = {             # encoders quieted only by the environment, read when their first one opens
    "libsvtav1": {"SVT_LOG": "1"},                                          # errors only: not its banner
}

SAR_CODECS = {"h264", "hevc", "mpeg4", "mpeg2video", "mjpeg"}   # say their pixels' shape in their own bitstream
FRAGMENTED_MUXERS = {"mp4", "mov"}      # FFmpeg's names for the formats that hold their index at the end
FRAGMENTED_CODECS = {"h264"}            # checked; FFmpeg 8.1 cannot mux HEVC fragments from a flat first frame
FIXED_RATE_MUXERS = {"avi"}             # a frame per tick of the time base: any other makes the rate wrong


def fragmented_options(fragment_s: float) -> dict:
    """Muxer options for a crash-safe MP4/MOV (FFmpeg 7.1+): fragments of ``fragment_s`` seconds, each
    written through to the file when it is complete, then an ordinary MP4 at a clean close."""
    return {"movflags": "+hybrid_fragmented", "frag_duration": str(round(fragment_s * 1e6)),
            "flush_packets": "1"}


def even_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """The nearest size >= (width, height) that ``pix_fmt`` can hold (chroma subsampling needs even sides)."""
    comps = av.VideoFormat(pix_fmt, 101, 101).components
    w2 = any(c.width not in (0, 101) for c in comps)
    h2 = any(c.height not in (0, 101) for c in comps)
    return width + (width % 2 if w2 else 0), height + (height % 2 if h2 else 0)


def write_error(path: Path, error: BaseException) -> MediaError:
    """A failed write, in words: the disk is full, an I/O error, or FFmpeg's reason."""
    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None) or str(error)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return MediaError(f"cannot write {path}: the disk is full ({reason}): free some space or write "
                          f"to another disk")
    if code == errno.EIO:
        return MediaError(f"cannot write {path}: I/O error ({reason}): is the disk failing or unplugged?")
    return MediaError(f"cannot write {path}: {reason}")


def encoder(codec: str) -> av.Codec | None:
    """FFmpeg's encoder for ``codec`` (a name like libx264, or a format like hevc); None if it knows none."""
    try:
        return av.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        return None


def encoder_name(codec: str) -> str:
    """The encoder FFmpeg picks for ``codec`` (hevc -> libx265); ``codec`` itself if it knows none."""
    found = encoder(codec)
    return found.name if found else codec


def codec_family(codec: str) -> str | None:
    """The format an encoder writes (libx264 -> h264); None for an unknown encoder."""
    found = encoder(codec)
    return found.canonical_name if found else None


def codec_type(codec: str) -> str | None:
    """What an encoder makes (video, audio, subtitle); None for an unknown encoder."""
    found = encoder(codec)
    return found.type if found else None


def hardware_encoder(codec: str) -> bool:
    """An encoder that runs on a GPU or media engine (h264_nvenc, hevc_qsv, ...): it opens only where that
    hardware and its driver are."""
    found = encoder(codec)
    return bool(found and found.capabilities & (Capabilities.hardware | Capabilities.hybrid))


def muxer_name(path: Path) -> str | None:
    """FFmpeg's name for the muxer that ``path``'s extension picks (None if none does); writes nothing."""
    try:
        container = av.open(str(path), "w")
    except (av.FFmpegError, OSError, ValueError):
        return None
    container.close()
    return container.format.name


@functools.cache
def warn_unfragmented(suffix: str) -> None:
    """Once per process: this FFmpeg writes MP4/MOV in one piece only."""
    log.warning("FFmpeg %s cannot write %s in fragments (needs 7.1+: pip install -U av): a %s output is "
                "unplayable if the run is killed before it ends", av.ffmpeg_version_info, suffix, suffix)


@functools.cache
def warn_square_pixels(holder: str, codec: str) -> None:
    """Once per process: FFmpeg's Matroska muxer writes only the stream's own pixel shape (SAR), which PyAV
    cannot set, so non-square pixels survive there only in a codec that says them itself."""
    log.warning("%s with %s cannot say that the input's pixels are not square, so the output plays at another "
                "shape: write .mp4 (or .mkv with --codec libx264)", holder, codec)


def intact_frames(path: Path) -> tuple[int, int]:
    """How many whole video frames ``path`` holds (counting packets: no decoding), if its first one decodes,
    and the byte where the last whole packet of any track ends (a fragment's sound follows its frames);
    (0, 0) if none."""
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            if next(iter(c.decode(stream)), None) is None:
                return 0, 0
            c.seek(0)
            whole = [p for p in c.demux() if p.size and not p.is_corrupt]   # corrupt: cut short
            frames = sum(p.stream.type == "video" for p in whole)
            return frames, max((p.pos + p.size for p in whole), default=0) if frames else 0
    except (av.FFmpegError, OSError, IndexError, ValueError):
        return 0, 0


class Encode(Stage):
    name = "encode"
    flag = "--out"                   # the option that named the file, for error messages

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction, time_base: Fraction, *,
                 codec: str = "auto", pix_fmt: str = "yuv420p", preset: str | None = None,
                 tune: str | None = None, crf: int | None = None, threads: int = 0, options: dict | None = None,
                 fragment_s: float = 1.0, audio: str | None = None, sample_aspect_ratio: Fraction | None = None):
        super().__init__()
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps, self.time_base = Fraction(fps), Fraction(time_base)
        self.codec = codec if codec != "auto" else AUTO_CODECS.get(self.path.suffix.lower(), "libx264")
        self.pix_fmt, self.threads = pix_fmt, int(threads)
        self.sample_aspect_ratio = sample_aspect_ratio     # the source's non-square pixels (None: square)
        encoder = encoder_name(self.codec)
        for name, value in CODEC_ENVIRONMENT.get(encoder, {}).items():
            os.environ.setdefault(name, value)             # the user's own setting wins
        self.options = {**CODEC_DEFAULTS.get(encoder, {}),
                        **{k: str(v) for k, v in (("preset", preset), ("tune", tune), ("crf", crf)) if v is not None},
                        **{str(k): str(v) for k, v in (options or {}).items()}}
        try:
            self.size = even_size(self.width, self.height, pix_fmt)
        except (ValueError, av.FFmpegError):
            raise InvalidInputError(f"unknown pixel format {pix_fmt!r} (encode.pix_fmt): use e.g. yuv420p") from None
        if self.size != (self.width, self.height):
            log.warning("%s is %dx%d, not %dx%d: %s needs even sides, so the last row/column is repeated "
                        "(encode.pix_fmt yuv444p keeps the size)", self.path, *self.size, self.width, self.height,
                        pix_fmt)
        self.fragment_s = float(fragment_s)
        self.muxer_options: dict = {}            # set by preflight: crash-safe fragments for MP4/MOV
        self.container = self.stream = None
        self.audio_source: str | None = None     # set by preflight: a file whose sound goes in the output
        self.audio: AudioCopy | None = None
        self.sound = "off" if audio is None else "none in the input"
        self.stream_time_base = self.time_base   # set by preflight: 1/fps where the source's cannot be written
        self._pending: dict[int, float] = {}     # pts (as encoded) -> t_decoded of frames inside the encoder
        self._frame_s = 1 / self.fps             # one frame's duration, s (exact)
        self._shift = Fraction(0)                # s added to the source's times since they went back
        self._last_t: Fraction | None = None     # the latest frame's time in the output, in s
        self._back = None                        # the frame before went back: (its time, where it went, last)
        self._last_pts = None
        self._stepped_back = False               # the input's timestamps went back (warned once)
        self._flushed = False
        self.packets = 0                         # packets muxed into the file
        self.failed = False                      # a write failed: the file may lack its trailer
        self.kept: int | None = None             # after a failed write: the frames the file really holds
        self._lock = None                        # the open, locked output file, from setup to teardown
        self._made = False                       # setup created the file (nothing was there before)
        self.preflight()
        self._refuse_if_busy()
        if audio is not None:
            self.preflight_audio(str(audio))

    @classmethod
    def from_settings(cls, path, width: int, height: int, info, settings, threads: int | None = None,
                      audio: bool = False, **extra) -> Encode:
        """An encoder for a source's timing (``info``: fps, time_base) with the ``encode:`` settings;
        ``audio``: copy the source's sound too (files only, and only if ``encode.audio``)."""
        copy = audio and settings.audio
        encoder = cls(path, width, height, info.fps, info.time_base, codec=settings.codec, pix_fmt=settings.pix_fmt,
                      preset=settings.preset, tune=settings.tune, crf=settings.crf,
                      threads=settings.threads if threads is None else threads, options=settings.options,
                      fragment_s=settings.fragment_s, audio=info.path if copy and info.kind == "file" else None,
                      sample_aspect_ratio=info.sample_aspect_ratio, **extra)
        if copy and info.kind != "file":
            encoder.sound = ("none in the input" if info.kind in ("images", "arrays") else
                             f"not copied: only a file's sound is copied, not a {info.kind}'s")
        return encoder

    def preflight(self) -> None:
        """Open the same container and encoder on a probe file in a temporary folder: a wrong extension,
        codec, pixel format or encoder option fails now, with what to do, instead of in a thread."""
        suffix = self.path.suffix
        if not suffix:
            raise InvalidInputError(f"{self.flag} {self.path} has no extension, so the container is unknown: "
                                    f"name it like {self.path}.mp4 (or .mkv, .mov)")
        if suffix.lower() in IMAGE_SUFFIXES:
            raise InvalidInputError(f"{self.flag} {self.path} is an image, but {self.flag} writes a video: "
                                    f"name a video file, e.g. .mp4")
        with tempfile.TemporaryDirectory(prefix="segpipe-probe-") as tmp:
            probe = Path(tmp) / f"probe{suffix}"
            muxer = muxer_name(probe)
            if muxer in FIXED_RATE_MUXERS:
                self.stream_time_base = self.frame_time_base
            fragmented = (self.fragment_s > 0 and muxer in FRAGMENTED_MUXERS
                          and codec_family(self.codec) in FRAGMENTED_CODECS)
            if fragmented:
                options = fragmented_options(self.fragment_s)
                with contextlib.suppress(InvalidInputError):     # raised again below if the settings are wrong
                    self._probe_time_base(probe, options)
                    self.muxer_options = options
                    return
            self._probe_time_base(probe, {})
            if fragmented:                                        # the settings are fine: FFmpeg is before 7.1
                warn_unfragmented(suffix)

    def preflight_audio(self, source: str) -> None:
        """Copy ``source``'s sound if it has any and this container can hold it (tried on a probe file);
        if it cannot, say so: the output is silent."""
        if not Path(source).is_file():    # a pipe or a device: a second reader would take the first one's data
            self.sound = "not copied: the input is a pipe or device, which cannot be read twice"
            log.info("%s is a pipe or device: its sound, if it has any, is not copied", source)
            return
        try:
            audio = AudioCopy(source)
        except (av.FFmpegError, OSError, ValueError) as e:
            self.sound = f"not copied: {e}"
            log.warning("%s: cannot read the sound (%s); the output is silent", source, e)
            return
        try:
            if audio.track is None:
                return
            if self.probe_suffix.lower() == ".avi":    # AVI delays H.264 by a frame on reading, not the sound
                self.sound = "not copied: .avi files cannot keep it in step"
                log.warning("the input's sound cannot be kept in step in .avi files, so %s is silent: write "
                            ".mp4 or .mkv to keep it, or pass --no-audio", self.path)
                return
            with tempfile.TemporaryDirectory(prefix="segpipe-probe-") as tmp:
                self._probe(Path(tmp) / f"probe{self.probe_suffix}", self.muxer_options, audio)
        except (InvalidInputError, av.FFmpegError, ValueError):    # ValueError: a format that cannot hold it
            self.sound = f"not copied: {self.holder} cannot hold {audio.codec}"
            log.warning("the input's sound (%s) cannot go into %s, so %s is silent: write .mkv to keep "
                        "it, or pass --no-audio", audio.codec, self.holder, self.path)
            return
        finally:
            audio.close()
        self.audio_source, self.sound = source, f"copied ({audio.codec})"
        if audio.note:
            log.info("%s: %s", source, audio.note)

    @property
    def frame_time_base(self) -> Fraction:
        """One tick per frame (denominators small enough for mpeg4's 65535 at up to 65 fps)."""
        return 1 / self.fps.limit_denominator(1001)

    def _probe_time_base(self, path: Path, muxer_options: dict) -> None:
        """``_probe``; where the encoder refuses the source's time base (mpeg4 and a TS's 1/90000), again with
        one tick per frame, and keep that."""
        try:
            self._probe(path, muxer_options)
        except InvalidInputError as first:
            if self.stream_time_base == self.frame_time_base:
                raise
            self.stream_time_base = self.frame_time_base
            try:
                self._probe(path, muxer_options)
            except InvalidInputError:
                self.stream_time_base = self.time_base
                raise first from None                # the same settings fail either way: say the first reason
            log.info("%s cannot use the input's time base %s: %s is written at %s", self.codec, self.time_base,
                     self.path, self.stream_time_base)

    def _probe(self, path: Path, muxer_options: dict, audio: AudioCopy | None = None) -> None:
        """Open the container with ``muxer_options`` and this encoder (and ``audio``'s track) on ``path``
        and start encoding (which writes the header)."""
        try:
            container = av.open(str(path), "w", options=muxer_options)
        except (av.FFmpegError, OSError, ValueError):
            raise InvalidInputError(f"{self.flag} {self.path}: FFmpeg cannot write {self.holder}: use .mp4 "
                                    f"or .mkv (or .mov, .avi, .webm)") from None
        try:
            stream = self._add_stream(container)
            if audio is not None:
                audio.add_to(container)
            try:
                if muxer_options:   # header and a packet at once: FFmpeg 8.1 crashes closing a fragmented
                    blank = np.zeros((self.size[1], self.size[0], 3), np.uint8)   # file with a header only
                    for packet in [*stream.encode(av.VideoFrame.from_ndarray(blank, "rgb24")), *stream.encode()]:
                        container.mux(packet)
                else:
                    container.start_encoding()
            except (av.FFmpegError, OSError, ValueError) as e:
                reason = str(e).split(": '")[0]
                options = dict(self._stream_options) or "no options"
                if hardware_encoder(self.codec):
                    raise InvalidInputError(f"cannot start the {self.codec} encoder ({reason}): it is a hardware "
                                            f"encoder and needs its GPU (NVENC: an NVIDIA GPU) and driver on this "
                                            f"machine; here use --codec libx264 (or libx265)") from None
                raise InvalidInputError(f"cannot start the {self.codec} encoder at {self.size[0]}x"
                                        f"{self.size[1]} {self.pix_fmt} with {options} ({reason}): check "
                                        f"--codec and encode.pix_fmt/preset/tune/crf/options"
                                        f"{'' if self.codec == 'libx264' else ', or write .mp4 with --codec libx264'}"
                                        ) from None
        finally:
            try:
                container.close()
            except (av.FFmpegError, OSError, ValueError) as e:
                if audio is not None:     # the trailer describes the sound too, and can refuse it
                    raise InvalidInputError(f"cannot finish a file with this sound ({e})") from None

    holds_any = "use .mkv, which holds any codec, or another --codec"

    @property
    def holder(self) -> str:
        """What the output is, in messages (``.webm files``)."""
        return f"{self.path.suffix} files"

    @property
    def probe_suffix(self) -> str:
        """A file name's ending that muxes as the output does (for the probe files)."""
        return self.path.suffix

    def _add_stream(self, container):
        kind = codec_type(self.codec)
        if kind not in ("video", None):                             # None: unknown, refused just below
            what = "subtitles" if kind == "subtitle" else kind
            raise InvalidInputError(f"--codec {self.codec} encodes {what}, not video: name a video encoder, e.g. "
                                    f"libx264, libx265, libvpx-vp9 or mpeg4 (the input's sound is copied as it is)")
        try:
            stream = container.add_stream(self.codec, rate=self.fps)
        except (av.FFmpegError, ValueError) as e:
            if "does not support" in str(e):
                raise InvalidInputError(f"{self.holder} cannot hold {self.codec} ({e}): {self.holds_any}") from None
            raise InvalidInputError(f"cannot encode with {self.codec!r} ({e}): use e.g. --codec libx264, "
                                    f"libx265, libvpx-vp9 or mpeg4 (encode.codec in a config)") from None
        stream.width, stream.height = self.size
        stream.pix_fmt = self.pix_fmt
        stream.time_base = self.stream_time_base
        stream.codec_context.time_base = self.stream_time_base
        stream.codec_context.thread_count = self.threads
        if self.sample_aspect_ratio:     # plays at the source's shape: its pixels are kept as stored
            stream.codec_context.sample_aspect_ratio = self.sample_aspect_ratio
            if container.format.name in ("matroska", "webm") and codec_family(self.codec) not in SAR_CODECS:
                warn_square_pixels(self.holder, self.codec)
        if container.format.name in ("mp4", "mov") and codec_family(self.codec) == "hevc":
            stream.codec_context.codec_tag = "hvc1"     # FFmpeg's hev1 does not play in QuickTime or Safari
        if stream.codec_context.name in ("libx264", "libx265"):
            crf = self.options.get("crf")
            if crf is not None and not 0 <= float(crf) <= 51:    # the encoders would clamp it without a word
                raise InvalidInputError(f"encode.crf {crf} is outside {stream.codec_context.name}'s 0..51 (lower "
                                        f"is better and larger; 18-28 is usual, 23 the default)")
            self._stream_options = dict(self.options)
        else:   # preset/tune/crf mean nothing to other encoders; only pass the extra options
            self._stream_options = {k: v for k, v in self.options.items() if k not in ("preset", "tune", "crf")}
        stream.options = self._stream_options
        return stream

    def _busy_error(self) -> InvalidInputError:
        return InvalidInputError(f"{self.flag} {self.path} is being written by another process: wait for it to "
                                 f"end, or name another file")

    def _refuse_if_busy(self) -> None:
        """Fail before any work if another segpipe holds the file; takes nothing and creates nothing."""
        if fcntl is None or not isinstance(self.path, Path) or not self.path.is_file():    # (Publish: a URL)
            return
        try:
            with open(self.path, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)    # released by the close
        except BlockingIOError:
            raise self._busy_error() from None
        except OSError:         # unreadable, or a file system without locks: setup says what is wrong
            pass

    def _lock_output(self) -> None:
        """Open the file without truncating it and lock it, before av.open truncates it."""
        if fcntl is None or (self.path.exists() and not self.path.is_file()):     # a FIFO, a device
            return
        self._made = not self.path.exists()
        try:
            self._lock = open(self.path, "ab")
        except OSError as e:
            raise MediaError(f"cannot write {self.path}: {e.strerror or e} (does the folder exist and can it be "
                             f"written?)") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._unlock()
            raise self._busy_error() from None
        except OSError as e:    # a file system without locks (some network mounts): written unlocked
            log.debug("cannot lock %s (%s): written unlocked", self.path, e.strerror)

    def _unlock(self) -> None:
        """Release the file; one this run created but never opened (it stopped first) is removed."""
        if self._lock is None:
            return
        if self.container is None and self._made:
            self.path.unlink(missing_ok=True)
        self._lock.close()
        self._lock = None

    def setup(self) -> None:
        self._lock_output()
        try:
            self.container = av.open(str(self.path), "w", options=self.muxer_options)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"cannot write {self.path}: {getattr(e, 'strerror', None) or e} (does the folder "
                             f"exist and can it be written?)") from None
        self._add_tracks()

    def _add_tracks(self) -> None:
        """The video stream, and the sound copied from the input where preflight found it can go in."""
        self.stream = self._add_stream(self.container)
        if self.audio_source is not None:
            try:
                trims = self.container.format.name in FRAGMENTED_MUXERS and not self.muxer_options   # edit lists
                self.audio = AudioCopy(self.audio_source, from_zero=not trims)
                self.audio.add_to(self.container)
            except (av.FFmpegError, OSError, ValueError) as e:    # changed since preflight: go on silent
                if self.audio is not None:
                    self.audio.close()
                self.audio, self.sound = None, f"not copied: {e}"
                log.warning("%s: cannot read the sound (%s); %s is silent", self.audio_source, e, self.path)

    def process(self, frame):
        image = frame.output
        h, w = image.shape[:2]
        if (w, h) != self.size:
            if w > self.size[0] or h > self.size[1]:
                raise MediaError(f"frame {frame.index} is {w}x{h} but the output is {self.size[0]}x{self.size[1]}")
            image = cv2.copyMakeBorder(image, 0, self.size[1] - h, 0, self.size[0] - w, cv2.BORDER_REPLICATE)
        if self.pix_fmt == "yuv420p":     # OpenCV's SIMD RGB->I420 (BT.601, limited range, as swscale's
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        else:                             # default) is several times cheaper than the encoder's conversion
            vf = av.VideoFrame.from_ndarray(image, format="rgb24")
        source_t = frame.pts * frame.time_base
        t = source_t + self._shift
        if self._last_t is not None and t < self._last_t - self._frame_s:     # back by more than a frame
            if self._back is not None and source_t > self._back[0]:    # and the next too: a new recording
                self._shift = self._back[1] - self._back[0]             # (joined files, a loop) goes on from
                t = source_t + self._shift                              # where its first frame was put
                if not self._stepped_back:                              # once: a looped file goes back at
                    log.warning("the input's timestamps went back at frame %d (to %.3f s after %.3f s): the "
                                "output continues them one frame later", frame.index - 1, float(self._back[0]),
                                float(self._back[2]))                   # every loop
                self._stepped_back, self._back = True, None
            else:             # a late frame (a damaged stream's decoder), or a new recording's first: next
                self._back = (source_t, self._last_t + self._frame_s, self._last_t - self._shift)
                t = self._back[1]
        else:
            self._back = None
        pts = round(t / self.stream_time_base)     # exact in the source's time base
        if self._last_pts is not None and pts <= self._last_pts:   # a late frame, or two in a tick of 1/fps
            pts = self._last_pts + 1               # (the encoder needs rising pts; the rest keep their times)
        self._last_t, self._last_pts = t if self._last_t is None else max(t, self._last_t), pts
        vf.pts, vf.time_base = pts, self.stream_time_base
        self._pending[pts] = frame.t_decoded
        with self._writing():
            self._mux(self.stream.encode(vf))
            if self.audio is not None:      # the sound up to the end of this frame
                self.audio.mux_until(self.container, float(source_t + self._frame_s))
        return None

    @contextlib.contextmanager
    def _writing(self):
        """A write that fails marks the file failed and says why (disk full, I/O error, FFmpeg's reason)."""
        try:
            yield
        except (av.FFmpegError, OSError) as e:
            self.failed = True
            raise write_error(self.path, e) from None

    def _mux(self, packets) -> None:
        for packet in packets:
            pts = packet.pts                  # in the encoder's time base; mux rescales the packet
            self.container.mux(packet)
            self.packets += 1
            t = self._pending.pop(pts, None)
            if t is not None:
                self.deliver(t)

    def finish(self):
        self._flushed = True
        with self._writing():
            self._mux(self.stream.encode())  # flush: the frames still inside the encoder
        return None

    def teardown(self) -> None:
        if self.container is None:
            self._unlock()
            return
        close_error = None
        try:
            if not self._flushed and not self.failed and self.stream is not None:
                self._flushed = True
                try:
                    self._mux(self.stream.encode())
                except (av.FFmpegError, OSError) as e:  # keep what was written; the first error matters more
                    log.debug("encoder flush after a stop failed: %s", e)
        finally:
            try:
                self.container.close()       # writes the trailer (an MP4's index)
            except (av.FFmpegError, OSError) as e:
                close_error, self.failed = e, True
            if self.audio is not None:
                self._close_audio()
            self._remove_if_unusable(finalised=close_error is None)
            self._unlock()
        if close_error is not None:
            raise write_error(self.path, close_error)

    def _close_audio(self) -> None:
        if not self.audio.packets and not self.audio.stopped:     # an empty track, or sound only after the end
            self.sound = f"none written: the {self.audio.codec} track has no sound before the last frame"
        if self.audio.stopped:
            self.sound += f", stopped after {self.audio.packets} packets: {self.audio.stopped}"
        try:
            self.audio.close()
        except (av.FFmpegError, OSError) as e:
            log.debug("closing %s's second reader failed: %s", self.audio_source, e)

    def _remove_if_unusable(self, finalised: bool) -> None:
        """Never leave a file that holds nothing, or that a write error left unplayable; trim a fragmented
        file that could not be finalised to its whole frames."""
        if self.failed and self.packets:
            self.kept, end = intact_frames(self.path)   # what reached the disk, not what was handed to it
            if self.kept and self.muxer_options and not finalised:   # the error cut its last fragment short
                try:
                    os.truncate(self.path, end)
                except OSError as e:
                    log.warning("could not trim the unfinished fragment off %s: %s", self.path, e)
        if self.packets and self.kept != 0:
            return
        why = "no frame was encoded" if not self.packets else "it could not be finalised after a write error"
        try:
            self.path.unlink(missing_ok=True)
            log.warning("removed %s: %s", self.path, why)
        except OSError as e:
            log.warning("%s is unusable (%s) and could not be removed: %s", self.path, why, e)
