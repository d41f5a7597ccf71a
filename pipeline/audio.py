"""The input file's sound, copied into the output as it is: packets remuxed, never decoded or re-encoded.

The encoder asks for the sound up to the end of each frame it writes (``mux_until``), so sound and picture
are interleaved as they are written and stay in step. Frames always keep their source timestamps. Sound
that starts before zero (AAC's priming packet, 1024 samples) is kept that way where the muxer trims it with
an edit list (an MP4 or MOV written in one piece); MP4 fragments and Matroska cannot, and FFmpeg would move
the picture later to make room (the first frame lasting ~21 ms longer, the rest late), so there the sound
starts at zero instead: ~21 ms behind the picture, well inside lip-sync tolerance (sound that ends before
zero is left out, so the lag is at most one packet). A run that stops
early (``--frames``, Ctrl-C, a failure) has sound up to its last frame. Only files have their sound copied:
the file is opened a second time, which a camera or a live stream does not allow.

Sound that cannot be copied never costs the video: damaged data, timestamps that go back (clips joined end to
end) or a packet the muxer refuses stop the sound there, with a warning, and the picture goes on. Only a
failed write (disk full, I/O error) fails the run, as it would for the video.
"""
from __future__ import annotations

import errno
import logging

import av

log = logging.getLogger("segpipe.pipeline")
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}     # the output cannot be written: the run fails
LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}   # FFmpeg's defaults


class AudioCopy:
    """The first audio track of ``path``, read packet by packet; ``track`` is None when it has none.
    ``stopped`` says why the sound stopped before the video did, if it did."""

    def __init__(self, path: str, from_zero: bool = False):
        self.path = path
        self.from_zero = from_zero    # sound before zero is moved to zero (the output cannot trim it)
        self._shift = None            # what is added to each packet's timestamps
        self.container = av.open(path)
        tracks = self.container.streams.audio
        self.track = tracks[0] if tracks else None
        self.codec = self.track.codec_context.codec.canonical_name if self.track is not None else None  # mp3,
                                                                            # not its decoder's mp3float
        self.note = f"{len(tracks)} audio tracks: the first is copied" if len(tracks) > 1 else None
        self.stream = None            # its copy in the output
        self.packets = 0              # packets muxed
        self.stopped: str | None = None
        self._reader = self.container.demux(self.track) if self.track is not None else None
        self._ahead = None            # a packet read that belongs after the frames written so far
        self._last_dts = None

    def add_to(self, container):
        """Add the track to an output ``container`` (before its header is written)."""
        self.stream = container.add_stream_from_template(self.track)
        layout = self.track.codec_context.layout
        if layout.name.endswith(" channels") and layout.nb_channels in LAYOUTS:   # a count, no named layout
            self.stream.codec_context.layout = LAYOUTS[layout.nb_channels]       # (Matroska PCM): MP4 needs one
        return self.stream

    def mux_until(self, container, t: float) -> None:
        """Mux the packets that start before ``t`` seconds (source time) into ``container``. A write
        error (disk full, I/O) is raised; sound FFmpeg will not take stops the sound, not the video."""
        while self._reader is not None:
            packet = self._ahead if self._ahead is not None else self._read()
            self._ahead = None
            if packet is None:
                return
            if float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base) >= t:
                self._ahead = packet
                return
            if self._last_dts is not None and packet.dts <= self._last_dts:
                return self._stop("its timestamps go back (clips joined end to end?)")
            self._last_dts = packet.dts
            if self._shift is None:
                start = min(packet.dts, packet.pts if packet.pts is not None else packet.dts)
                if self.from_zero and start + (packet.duration or 0) < 0:
                    continue            # ends before the first frame, as an edit list would trim it
                self._shift = max(0, -start) if self.from_zero else 0
            if self._shift:
                packet.dts += self._shift
                if packet.pts is not None:
                    packet.pts += self._shift
            packet.stream = self.stream
            try:
                container.mux(packet)
            except (av.FFmpegError, OSError) as e:
                if getattr(e, "errno", None) in WRITE_ERRNOS:
                    raise
                return self._stop(f"FFmpeg refused a packet: {e}")
            self.packets += 1

    def _read(self):
        """The next packet with a timestamp; None at the end, or where the data is damaged."""
        try:
            for packet in self._reader:
                if packet.dts is not None:
                    return packet
        except (av.FFmpegError, ValueError) as e:
            self._stop(f"its data is damaged ({e})")
        self._reader = None
        return None

    def _stop(self, why: str) -> None:
        self.stopped, self._reader, self._ahead = why, None, None
        log.warning("%s: the sound stops after %d packets: %s; the video goes on", self.path, self.packets, why)

    def close(self) -> None:
        self.container.close()
