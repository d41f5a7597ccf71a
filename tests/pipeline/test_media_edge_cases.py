"""Media edge cases: non-square pixels carried to the output, image folders of mixed sizes refused, quiet
encoders whatever name picks them, and network addresses this FFmpeg build cannot open refused up front."""
import socket
import subprocess
import sys
import textwrap
import time
from fractions import Fraction

import av
import cv2
import pytest
from PIL import Image

from mediakit import write_video
from pipehelp import StubBackend, frame_image, write_clip
from pipeline import encode
from pipeline.cli import main
from pipeline.run import run
from pipeline.sources import has_protocol, open_source
from train.errors import InvalidInputError, MediaError

SAR = Fraction(4, 3)


def sar_clip(path, sar=SAR, rotation=None, frames=4, width=96, height=64):
    """A clip whose pixels are ``sar`` wide (4:3: a 96x64 clip shows as 128x64)."""
    return write_video(path, frames, width, height, rotation=rotation, sample_aspect_ratio=sar)


def shape(path):
    """(width, height, sample aspect ratio) of a video's stream as FFmpeg reads it back."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height, s.sample_aspect_ratio


@pytest.fixture
def stub_model(monkeypatch):
    import pipeline.run
    monkeypatch.setattr(pipeline.run, "load_backend", lambda *args, **kwargs: StubBackend())


@pytest.fixture
def no_model(monkeypatch):
    """A refusal must come before the model loads."""
    import pipeline.run

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(pipeline.run, "load_backend", load)


# non-square pixels


@pytest.mark.parametrize("name", ["seg.mp4", "seg.mkv"])
def test_non_square_pixels_keep_their_shape_and_masks_their_grid(tmp_path, settings, name):
    out, masks = tmp_path / name, tmp_path / "m"
    run(sar_clip(tmp_path / "sar.mp4"), out, settings, masks=masks, backend=StubBackend())
    assert shape(out) == (96, 64, SAR)                  # stored as the source was, shown 128x64 as it was
    assert {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in masks.iterdir()} == {(64, 96)}


def test_a_turned_video_turns_its_pixel_shape_too(tmp_path, settings):
    clip = sar_clip(tmp_path / "phone.mp4", rotation=90)
    source = open_source(clip, settings.decode)
    info = source.info
    source.close()
    assert (info.width, info.height, info.sample_aspect_ratio) == (64, 96, 1 / SAR)
    out = tmp_path / "seg.mp4"
    run(clip, out, settings, backend=StubBackend())
    assert shape(out) == (64, 96, 1 / SAR)


def test_square_pixels_add_no_aspect_ratio(tmp_path, clip, settings):
    out = tmp_path / "seg.mp4"
    run(clip, out, settings, backend=StubBackend())
    assert shape(out) == (96, 64, None)
    with av.open(str(out)) as c:
        assert not c.streams.video[0].codec_context.sample_aspect_ratio


def test_webm_cannot_hold_it_and_says_so(tmp_path, settings, caplog):
    encode.warn_square_pixels.cache_clear()
    out = tmp_path / "seg.webm"
    run(sar_clip(tmp_path / "sar.mp4"), out, settings, backend=StubBackend())
    assert shape(out)[:2] == (96, 64)
    assert (".webm files with libvpx-vp9 cannot say that the input's pixels are not square, so the output plays "
            "at another shape: write .mp4 (or .mkv with --codec libx264)") in caplog.text


RECEIVER = textwrap.dedent("""
    import av, sys
    with av.open(sys.argv[1], timeout=15) as c:
        frame = next(c.decode(video=0))
        print(c.streams.video[0].sample_aspect_ratio, frame.width, frame.height)
""")


def test_a_stream_carries_it_too(tmp_path, stub_model):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clip = sar_clip(tmp_path / "sar.mp4", frames=20)
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER, f"udp://127.0.0.1:{port}?timeout=5000000"],
                          stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)                         # listening before the first packet goes out
    assert main(["run", str(clip), "--out", f"udp://127.0.0.1:{port}", "--no-progress"]) == 0
    assert rx.communicate(timeout=30)[0].split() == ["4/3", "96", "64"]


# image folders of mixed sizes


def test_an_image_folder_of_mixed_sizes_is_refused_before_any_work(tmp_path, no_model, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, (w, h) in enumerate([(96, 64), (48, 32), (96, 64)]):
        cv2.imwrite(str(folder / f"f{i}.png"), frame_image(i, w, h))
    out, masks = tmp_path / "seg.mp4", tmp_path / "m"
    assert main(["run", str(folder), "--out", str(out), "--masks", str(masks), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"segpipe run: error: {folder}/f1.png is 48x32 but the first image, f0.png, is 96x64: pass images of one "
        f"size (resize them first, or segment each size separately)")
    assert not out.exists() and not any(masks.glob("*"))


def test_a_photo_turned_by_its_exif_tag_is_named_as_such(tmp_path, settings):
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6                                    # stored 96x64, shown a quarter turn: 64x96
    Image.fromarray(frame_image(0, 96, 64)).save(folder / "a.jpg", exif=exif)
    Image.fromarray(frame_image(1, 96, 64)).save(folder / "b.jpg")
    with pytest.raises(InvalidInputError) as e:
        open_source(folder, settings.decode)
    assert str(e.value) == (f"{folder}/b.jpg is 96x64 but the first image, a.jpg, is 64x96 (turned: a photo's "
                            f"EXIF orientation?): pass images of one size (resize them first, or segment each "
                            f"size separately)")


# quiet encoders


@pytest.mark.parametrize("codec", ["hevc", "libx265", "libsvtav1"])
def test_encoders_print_nothing_whatever_name_picks_them(tmp_path, clip, settings, capfd, monkeypatch, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg has no {codec}")
    monkeypatch.delenv("SVT_LOG", raising=False)    # SVT-AV1 reads it when its first encoder opens
    capfd.readouterr()
    out = tmp_path / "seg.mkv"
    run(clip, out, settings.override(encode={"codec": codec}), backend=StubBackend())
    err = capfd.readouterr().err                    # FFmpeg's libraries write to fd 2 themselves
    assert shape(out)[:2] == (96, 64)
    assert "x265 [" not in err and "encoded" not in err and "Svt[" not in err, err


def test_an_alias_gets_the_encoders_own_defaults():
    assert encode.encoder_name("hevc") == "libx265" and encode.encoder_name("libx265") == "libx265"
    assert encode.encoder_name("no-such-codec") == "no-such-codec"     # preflight says what is wrong


# network addresses


def test_protocols_are_looked_up_without_any_io():
    t0 = time.monotonic()
    assert all(has_protocol(s) for s in ("udp", "tcp", "rtp", "http", "file"))
    assert not has_protocol("no-such-protocol")
    assert time.monotonic() - t0 < 1


@pytest.mark.skipif(has_protocol("srt"), reason="this FFmpeg has SRT")
def test_srt_without_libsrt_is_refused_up_front(tmp_path, no_model, capsys):
    clip = write_clip(tmp_path / "clip.mp4", frames=4)
    lack = f"this FFmpeg build (PyAV's, FFmpeg {av.ffmpeg_version_info}) has no srt:// protocol: use udp:// or " \
           f"rtsp:// instead, or a PyAV built on an FFmpeg that has it (pip install av --no-binary av)"
    assert main(["run", str(clip), "--out", "srt://127.0.0.1:1", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"segpipe run: error: cannot stream to srt://127.0.0.1:1: {lack}"
    assert main(["run", "srt://127.0.0.1:1", "--out", str(tmp_path / "seg.mp4"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"segpipe run: error: cannot open srt://127.0.0.1:1: {lack}"


def test_a_udp_source_with_no_sender_names_the_timeout(settings):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        url = f"udp://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    with pytest.raises(MediaError) as e:
        open_source(url, settings.override(decode={"timeout_s": 0.5}).decode)
    assert str(e.value) == (f"nothing arrived from {url} within 0.5 s (decode.timeout_s): is the sender running, "
                            f"and sending to this address and port? (if it is only slow to start, raise "
                            f"decode.timeout_s)")
    assert time.monotonic() - t0 < 5
