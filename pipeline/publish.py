"""Publish: the finished frames as a live network stream, where DeepStream would use an RTSP or UDP sink.

    segpipe run rtsp://cam.local/stream --out rtsp://server:8554/seg   push to an RTSP server (e.g. MediaMTX)
    segpipe run drive.mp4 --out udp://239.0.0.1:5000                  MPEG-TS over UDP (also tcp://, srt://
                                                                      where FFmpeg has libsrt)
    segpipe run 0 --out rtmp://server/live/seg                        FLV to an RTMP server

The encoder is Encode's, with a key frame every second so a viewer can join at any time. A file goes out
at its own frame rate, as a camera's would (a player fed faster than real time only buffers); a live
source goes out as its frames come (so for a file, the statistics' latency includes that pacing; the
encode stage's busy time does not). A file's sound goes with it, copied as it is, where the stream's format holds it (MPEG-TS and FLV
hold AAC and MP3). The encoder settings are tried on a local file of the same kind before any work; the
server is reached when the run starts, and a refused or lost connection stops the run with the URL and
the reason. A receiver that takes nothing for ``SEND_TIMEOUT_S`` (a server that stopped reading, an
address that never answers) stops the run too, instead of a write that waits for ever.
"""
from __future__ import annotations

import errno
import re
import tempfile
import time
from pathlib import Path

import av

from pipeline.encode import Encode
from pipeline.sources import check_protocol
from train.errors import InvalidInputError, MediaError
from train.paths import URL_SCHEME

MUXERS = {"rtsp": "rtsp", "rtmp": "flv", "rtmps": "flv", "udp": "mpegts", "tcp": "mpegts", "srt": "mpegts"}
MUXER_OPTIONS = {"rtsp": {"rtsp_transport": "tcp"}}   # TCP: no lost packets, through firewalls
PROBE_SUFFIX = {"rtsp": ".ts", "flv": ".flv", "mpegts": ".ts"}   # a local file that muxes alike
CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0   # connecting or one write blocked this long: the receiver is gone (PyAV's timeout= is
                        # for inputs; an output's socket calls have none, so the runner's watchdog keeps it)
UNREACHABLE = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
MAX_WAIT_S = 1.0        # a jump ahead in a file's timestamps longer than this is not waited out


def is_url(out) -> bool:
    return isinstance(out, str) and re.match(URL_SCHEME + "//", out) is not None


def network_muxer(url: str) -> str:
    """FFmpeg's muxer for sending to ``url``, or a one-line error naming the schemes segpipe sends to (or
    saying that this FFmpeg build cannot: srt:// needs libsrt)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in MUXERS:
        raise InvalidInputError(f"--out {url}: segpipe streams out to {', '.join(s + '://' for s in MUXERS)}, not "
                                f"{scheme}://: name one of those, or a local file")
    check_protocol(url, "stream to")
    return MUXERS[scheme]


class Publish(Encode):
    """Encode, sent to ``url`` (see the module's docstring)."""
    holds_any = "use --codec libx264"          # what to do when the stream's format refuses a codec

    def __init__(self, url: str, width: int, height: int, fps, time_base, *, live: bool, options: dict | None = None,
                 fragment_s: float = 0, **encode_options):
        self.url, self.live = url, live
        self.muxer = network_muxer(url)
        gop = {"g": str(max(1, round(float(fps))))}            # a key frame a second: viewers join at once
        super().__init__(url, width, height, fps, time_base, options={**gop, **(options or {})}, fragment_s=0,
                         **encode_options)                     # (fragments are for files)
        self._clock: float | None = None                       # wall time at which the source's time 0 is due
        self._sending_since: float | None = None               # monotonic time a connect or write began

    @classmethod
    def from_settings(cls, url: str, width: int, height: int, info, settings, **kwargs) -> Publish:
        return super().from_settings(url, width, height, info, settings, audio=True, live=info.live, **kwargs)

    @property
    def holder(self) -> str:
        return f"{self.muxer} streams"

    @property
    def probe_suffix(self) -> str:
        return PROBE_SUFFIX[self.muxer]

    def preflight(self) -> None:
        self.path = self.url                                   # what messages name (Path() would mangle it)
        with tempfile.TemporaryDirectory(prefix="segpipe-probe-") as tmp:
            self._probe_time_base(Path(tmp) / f"probe{self.probe_suffix}", {})

    def setup(self) -> None:
        self._sending_since = time.monotonic()
        try:   # the header goes out now: a server that refuses is an error before the first frame
            self.container = av.open(self.url, "w", format=self.muxer, options=MUXER_OPTIONS.get(self.muxer, {}),
                                     timeout=CONNECT_TIMEOUT_S)
            self._add_tracks()
            self.container.start_encoding()
        except (av.FFmpegError, OSError, ValueError) as e:
            unreachable = getattr(e, "errno", None) in UNREACHABLE
            raise MediaError(f"cannot stream to {self.url}: {getattr(e, 'strerror', None) or e}"
                             f"{' (is the server running and reachable?)' if unreachable else ''}") from None
        finally:
            self._sending_since = None

    def _mux(self, packets) -> None:
        self._sending_since = time.monotonic()
        try:
            super()._mux(packets)
        finally:
            self._sending_since = None

    def watchdog(self):
        since = self._sending_since
        if since is None or time.monotonic() - since < SEND_TIMEOUT_S:
            return None
        return MediaError(f"{self.url} took nothing for {time.monotonic() - since:.0f} s: the receiver stopped "
                          f"reading or cannot be reached")

    def process(self, frame):
        if not self.live:
            self._wait_until_due(float(frame.pts * frame.time_base))
        return super().process(frame)

    def _wait_until_due(self, t: float) -> None:
        now = time.monotonic()
        if self._clock is None or not -MAX_WAIT_S < self._clock + t - now < MAX_WAIT_S:
            self._clock = now - t                              # the first frame, or a jump: start the clock here
        delay = self._clock + t - now
        if delay > 0:
            time.sleep(delay)
            self.paced_s = delay                               # (not the encoder's work: see Stage.call)

    def _remove_if_unusable(self, finalised: bool) -> None:
        """Nothing to remove: what was sent is with the receivers."""
