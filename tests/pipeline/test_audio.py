"""The input's sound in the output: copied packet for packet, in step with the frames, cut where they stop."""
import json
import logging
import os
import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from pipehelp import probe, write_clip
from pipeline.cli import main
from pipeline.run import run


def audio_packets(path) -> list[tuple[float, bytes]]:
    """(start in seconds, bytes) of each audio packet; [] if there is no audio track."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [(round(float(p.pts * p.time_base), 4), bytes(p)) for p in c.demux(audio=0) if p.dts is not None]


@pytest.mark.parametrize("sound,layout,src_ext,out_ext,fragment_s", [
    ("aac", "mono", "mp4", "mp4", 1.0), ("aac", "mono", "mp4", "mp4", 0), ("libopus", "stereo", "mkv", "mkv", 1.0),
    ("pcm_s16le", "mono", "mkv", "mov", 1.0), ("libmp3lame", "stereo", "mkv", "mp4", 1.0),
    ("pcm_s16le", "stereo", "mkv", "mp4", 1.0),   # Matroska names no layout for PCM, which MP4 needs: stereo
])
def test_the_sound_is_copied_as_it_is_and_in_step(tmp_path, stub, settings, sound, layout, src_ext, out_ext,
                                                  fragment_s):
    clip = write_clip(tmp_path / f"clip.{src_ext}", frames=25, audio=sound, audio_layout=layout)
    out = tmp_path / f"seg.{out_ext}"
    stats = run(clip, out, settings.override(encode={"fragment_s": fragment_s}), backend=stub)
    want = [p for p in audio_packets(clip) if p[0] < 25 / 25]          # up to the end of the last frame
    got = audio_packets(out)
    assert len(want) > 10 and [b for _, b in got] == [b for _, b in want]     # the same bytes, none re-encoded
    src, seg = probe(clip)["seconds"], probe(out)["seconds"]
    assert len(seg) == 25 and seg == pytest.approx(src, abs=1.5e-3)          # every frame at its own time
    # Sound that starts before 0 (AAC's priming packet) stays there where an edit list trims it (an MP4 in
    # one piece); MP4 fragments and Matroska cannot, so it starts at 0: ~21 ms late, the frames untouched.
    early = -min(want[0][0], 0)
    shift = 0 if (out_ext, fragment_s) == ("mp4", 0) else early
    assert [g for g, _ in got] == pytest.approx([w + shift for w, _ in want], abs=1.5e-3)
    assert (early > 0) == (sound != "pcm_s16le")                               # lossy codecs prime
    assert stats["audio"] == f"copied ({ {'libopus': 'opus', 'libmp3lame': 'mp3'}.get(sound, sound)})"
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.layout.name == layout


def test_a_run_that_stops_early_has_sound_up_to_its_last_frame(tmp_path, stub, settings):
    clip = write_clip(tmp_path / "clip.mp4", frames=25, audio="aac")
    out = tmp_path / "seg.mp4"
    run(clip, out, settings.override(decode={"max_frames": 10}), backend=stub)
    assert probe(out)["frames"] == 10
    want = [b for t, b in audio_packets(clip) if t < 10 / 25]        # the sound up to the 10th frame's end
    assert len(want) > 10 and [b for _, b in audio_packets(out)] == want


@pytest.mark.parametrize("ext,why,warning", [
    ("webm", "not copied: .webm files cannot hold aac", "cannot go into .webm files"),
    ("avi", "not copied: .avi files cannot keep it in step", "cannot be kept in step in .avi files"),  # reading
])                                                                   # AVI delays H.264 by a frame, not sound
def test_a_container_that_cannot_hold_the_sound_is_silent_with_a_warning(tmp_path, stub, settings, caplog, ext,
                                                                         why, warning):
    clip = write_clip(tmp_path / "clip.mp4", audio="aac")
    out = tmp_path / f"seg.{ext}"
    with caplog.at_level(logging.WARNING, "segpipe.pipeline"):
        stats = run(clip, out, settings, backend=stub)
    assert probe(out)["frames"] == 12 and audio_packets(out) == []
    assert stats["audio"] == why
    assert warning in caplog.text and "--no-audio" in caplog.text


def test_a_track_without_sound_before_the_last_frame(tmp_path, stub, settings):
    """Sound that starts after the last frame (or a track with no packets) leaves an empty track, said so."""
    clip = write_clip(tmp_path / "clip.mkv", frames=25, audio="aac")
    late = tmp_path / "late.mkv"
    with av.open(str(clip)) as src, av.open(str(late), "w") as dst:   # the sound moved 5 s later
        v, a = (dst.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0]))
        for packet in src.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "audio":
                shift = int(5 / packet.time_base)
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = v if packet.stream.type == "video" else a
            dst.mux(packet)
    stats = run(late, tmp_path / "seg.mkv", settings, backend=stub)
    assert stats["audio"] == "none written: the aac track has no sound before the last frame"


def test_inputs_without_sound_and_runs_without_an_output(tmp_path, stub, settings):
    silent = write_clip(tmp_path / "silent.mp4")
    assert run(silent, tmp_path / "a.mp4", settings, backend=stub)["audio"] == "none in the input"
    assert "audio" not in run(silent, None, settings, masks=tmp_path / "m", backend=stub)


def test_no_audio_leaves_it_out(tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", audio="aac")
    for flags, want in (([], "copied (aac)"), (["--no-audio"], "off")):
        out, stats = tmp_path / f"seg{len(flags)}.mp4", tmp_path / f"s{len(flags)}.json"
        assert main(["run", str(clip), "--out", str(out), "--stats", str(stats), "--no-progress", *flags]) == 0
        assert json.loads(stats.read_text())["audio"] == want
        assert bool(audio_packets(out)) == (not flags)


def test_a_pipe_is_read_once_so_its_sound_is_not_copied(tmp_path, stub, settings):
    """A second reader of a FIFO would take the first one's bytes: the frames all come through instead."""
    data = write_clip(tmp_path / "clip.mkv", frames=20, audio="aac").read_bytes()
    fifo = tmp_path / "feed.mkv"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=fifo.write_bytes, args=(data,), daemon=True)
    feeder.start()
    stats = run(fifo, tmp_path / "seg.mp4", settings, backend=stub)
    feeder.join(5)
    assert stats["frames"] == 20 and stats["exit"] == "done" and audio_packets(tmp_path / "seg.mp4") == []
    assert stats["audio"].startswith("not copied: the input is a pipe")


def test_sound_whose_timestamps_go_back_stops_there_and_the_video_goes_on(tmp_path, stub, settings, caplog):
    """Two MPEG-TS clips joined end to end (as dashcams and `cat` make them): the second half's sound
    starts again from 0, which no muxer takes; the sound stops with a warning, every frame is written."""
    part = write_clip(tmp_path / "part.ts", frames=25, audio="aac").read_bytes()
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part + part)
    out = tmp_path / "seg.mp4"
    with caplog.at_level(logging.WARNING, "segpipe.pipeline"):
        stats = run(joined, out, settings, backend=stub)
    assert stats["frames"] == probe(out)["frames"] == 50 and stats["exit"] == "done"
    assert stats["audio"].startswith("copied (aac), stopped after ") and "go back" in stats["audio"]
    assert "the sound stops after" in caplog.text
    assert len(audio_packets(out)) > 10


def test_sound_long_before_the_first_frame_is_left_out_not_played_late(tmp_path, stub, settings):
    """A track that starts 0.3 s before the picture (an edit list in the source): in MP4 fragments the sound
    that ends before 0 is left out, so what is kept starts at most one packet late, and frames keep their times."""
    clip = tmp_path / "early.mp4"
    with av.open(str(clip), "w") as c:
        video, sound = c.add_stream("libx264", rate=25), c.add_stream("aac", rate=48000)
        video.width, video.height, video.pix_fmt, sound.layout = 96, 64, "yuv420p", "mono"
        for i in range(round(1.3 * 48000 / 1024)):                       # -0.3 s .. 1.0 s of silence
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, -14400 + i * 1024, Fraction(1, 48000)
            c.mux(sound.encode(frame))
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 10, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            c.mux(video.encode(frame))
        c.mux(sound.encode())
        c.mux(video.encode())
    want = [(t, b) for t, b in audio_packets(clip) if t + 1024 / 48000 >= 0 and t < 1.0]
    assert audio_packets(clip)[0][0] < -0.3
    out = tmp_path / "seg.mp4"
    run(clip, out, settings, backend=stub)
    got = audio_packets(out)
    assert [b for _, b in got] == [b for _, b in want] and 0 <= got[0][0] - want[0][0] <= 1024 / 48000 + 1e-3
    assert probe(out)["seconds"] == pytest.approx(probe(clip)["seconds"], abs=1.5e-3)
