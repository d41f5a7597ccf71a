"""The input file's sound, copied into the output as it is: packets remuxed, never decoded or re-encoded.

The encoder asks for the sound up to the end of each frame it writes (``mux_until``), so sound and picture
are interleaved as they are written and stay in step: both keep their source timestamps (where the sound
starts before zero, as AAC's priming packet does, MP4 fragments and Matroska move both tracks later by
as much, as FFmpeg does when it copies). A run that stops
early (``--frames``, Ctrl-C, a failure) has sound up to its last frame. Only files have their sound copied:
the file is opened a second time, which a camera or a live stream does not allow.

Damaged sound never costs the video: the copy stops there, with a warning, and the picture goes on.
"""
from __future__ import annotations

import logging

import av

log = logging.getLogger("segpipe.pipeline")


class AudioCopy:
    """The first audio track of ``path``, read packet by packet; ``track`` is None when it has none."""

    def __init__(self, path: str):
        self.path = path
        self.container = av.open(path)
        tracks = self.container.streams.audio
        self.track = tracks[0] if tracks else None
        self.codec = self.track.codec_context.name if self.track is not None else None
        self.note = f"{len(tracks)} audio tracks: the first is copied" if len(tracks) > 1 else None
        self.stream = None            # its copy in the output
        self.packets = 0              # packets muxed
        self._reader = self.container.demux(self.track) if self.track is not None else iter(())
        self._ahead = None            # a packet read that belongs after the frames written so far

    def add_to(self, container):
        """Add the track to an output ``container`` (before its header is written)."""
        self.stream = container.add_stream_from_template(self.track)
        return self.stream

    def mux_until(self, container, t: float) -> None:
        """Mux the packets that start before ``t`` seconds (source time) into ``container``."""
        while True:
            packet, self._ahead = self._ahead or self._read(), None
            if packet is None:
                return
            if float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base) >= t:
                self._ahead = packet
                return
            packet.stream = self.stream
            container.mux(packet)
            self.packets += 1

    def _read(self):
        """The next packet with a timestamp; None at the end, or where the data is damaged (said once)."""
        if self._reader is None:
            return None
        try:
            for packet in self._reader:
                if packet.dts is not None:
                    return packet
        except (av.FFmpegError, ValueError) as e:
            log.warning("%s: the sound stops after %d packets, its data is damaged (%s); the video goes on",
                        self.path, self.packets, e)
        self._reader = None
        return None

    def close(self) -> None:
        self.container.close()
