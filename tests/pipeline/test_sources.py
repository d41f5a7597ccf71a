"""Every source kind: file, image folder, glob, file:// URL, http URL; and clear errors for bad ones."""
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import pytest

from pipehelp import StubBackend, decode_index, frame_image, probe, write_clip
from pipeline.run import run
from pipeline.sources import natural_sorted, open_source
from train.errors import InputNotFoundError, InvalidInputError, MediaError


def labels_in_order(masks):
    return [decode_index(cv2.imread(p, cv2.IMREAD_UNCHANGED)) for p in natural_sorted(map(str, masks.iterdir()))]


@pytest.fixture
def frames_dir(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(11):        # natural order: frame2 before frame10
        cv2.imwrite(str(d / f"frame{i}.png"), cv2.cvtColor(frame_image(i, 96, 64), cv2.COLOR_RGB2BGR))
    (d / "notes.txt").write_text("not an image")
    return d


def test_image_folder_in_natural_order_at_the_configured_rate(tmp_path, frames_dir, settings):
    out, masks = tmp_path / "seg.mp4", tmp_path / "m"
    stats = run(frames_dir, out, settings.override(decode={"fps": 10}), masks=masks, backend=StubBackend())
    assert labels_in_order(masks) == list(range(11))
    got = probe(out)
    assert got["frames"] == stats["frames"] == 11 and got["rate"] == 10


def test_glob(tmp_path, frames_dir, settings):
    masks = tmp_path / "m"
    run(str(frames_dir / "frame1*.png"), None, settings, masks=masks, backend=StubBackend())
    assert labels_in_order(masks) == [1, 10]          # frame1, frame10


def test_masks_of_images_are_named_after_them(tmp_path, frames_dir, settings):
    """frames/frame7.png gives m/frame7.png (beside a data set's masks, named alike), not its position."""
    masks = tmp_path / "m"
    run(str(frames_dir / "frame[79].png"), None, settings, masks=masks, backend=StubBackend())
    assert sorted(p.name for p in masks.iterdir()) == ["frame7.png", "frame9.png"]
    assert decode_index(cv2.imread(str(masks / "frame9.png"), cv2.IMREAD_UNCHANGED)) == 9


def test_masks_never_write_over_a_data_sets_own(tmp_path, carla_dir, settings):
    """CameraRGB/ with --masks CameraMask/: the masks would take the ground truth's names, so it is refused."""
    import shutil
    data = Path(shutil.copytree(carla_dir, tmp_path / "carla"))
    before = {p: p.read_bytes() for p in (data / "CameraMask").iterdir()}
    with pytest.raises(InvalidInputError, match=r"--masks .*CameraMask already holds \d+\.png and 11 others named "
                                                r"like the input images, .*: empty the folder or name another"):
        run(data / "CameraRGB", None, settings, masks=data / "CameraMask", backend=StubBackend())
    assert {p: p.read_bytes() for p in (data / "CameraMask").iterdir()} == before


def test_masks_of_images_sharing_a_name_are_numbered(tmp_path, settings, caplog):
    """a/0.png and b/0.png cannot both be m/0.png: the masks are numbered by position instead, and it is said."""
    for i, sub in enumerate("ab"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / ("0.png" if sub == "a" else "0.PNG")), cv2.cvtColor(frame_image(i + 3, 96, 64), cv2.COLOR_RGB2BGR))
    masks = tmp_path / "m"
    run(str(tmp_path / "*" / "0.*"), None, settings, masks=masks, backend=StubBackend())    # 0.png, 0.PNG
    assert sorted(p.name for p in masks.iterdir()) == ["000000.png", "000001.png"]
    assert labels_in_order(masks) == [3, 4]
    assert "--masks: 2 images share the name 0.*, so the masks are numbered in input order" in caplog.text


def test_file_url(tmp_path, clip, settings):
    out = tmp_path / "seg.mp4"
    run(clip.resolve().as_uri(), out, settings, backend=StubBackend())
    assert probe(out)["frames"] == 12


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("name,options", [("clip.mkv", None), ("clip.mp4", {"movflags": "+faststart"})])
def test_http_url(tmp_path, http_root, settings, name, options):
    root, base = http_root
    write_clip(root / name, frames=10, options=options)
    out, masks = tmp_path / "seg.mp4", tmp_path / "m"
    stats = run(f"{base}/{name}", out, settings, masks=masks, backend=StubBackend())
    assert stats["frames"] == 10 == probe(out)["frames"]
    assert labels_in_order(masks) == list(range(10))


def test_an_mp4_indexed_at_its_end_from_a_server_that_cannot_seek_says_so(http_root, settings):
    root, base = http_root                     # http.server answers no range requests
    # the moov atom after the frames, as FFmpeg writes by default, and more than FFmpeg's read buffer holds
    write_clip(root / "clip.mp4", frames=60, width=320, height=240)
    with pytest.raises(MediaError) as e:
        open_source(f"{base}/clip.mp4", settings.decode)
    assert "an MP4/MOV over HTTP needs a server that can seek (range requests)" in str(e.value)
    assert str(e.value).endswith("ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4")


@pytest.mark.parametrize("names, message", [
    (["bad.jpg"], "{d}/bad.jpg could not be read as an image: is it damaged, or not an image?"),
    (["a.jpg", "b.jpg"], "none of the 2 images in {d}/*.jpg could be read: are they images?"),
])
def test_images_that_cannot_be_read_are_one_line(tmp_path, settings, names, message):
    for name in names:
        (tmp_path / name).write_text("not an image")
    spec = str(tmp_path / names[0]) if len(names) == 1 else str(tmp_path / "*.jpg")
    with pytest.raises(InvalidInputError) as e:
        open_source(spec, settings.decode)
    assert str(e.value) == message.format(d=tmp_path)


def test_a_missing_url_says_what_the_server_said(http_root, settings):
    _, base = http_root
    with pytest.raises(InputNotFoundError) as e:                  # the input's fault (exit 2, a batch does not
        open_source(f"{base}/nope.mp4", settings.decode)          # retry it), as a missing file
    assert str(e.value) == (f"cannot open {base}/nope.mp4: Server returned 404 Not Found; check the address (and "
                            f"any credentials it needs)")          # FFmpeg's words, not its error number


def test_kinds_are_recognised(tmp_path, clip, frames_dir, settings):
    s = settings.decode
    assert open_source(clip, s).info.kind == "file"
    assert open_source(frames_dir, s).info.kind == "images"
    assert open_source(str(frames_dir / "*.png"), s).info.frames == 11
    info = open_source(clip.resolve().as_uri(), s).info
    assert info.kind == "url" and not info.live and info.frames == 12
    assert natural_sorted(["f10.png", "f2.png", "f1.png"]) == ["f1.png", "f2.png", "f10.png"]


def test_dash_reads_standard_input(tmp_path):
    data = write_clip(tmp_path / "clip.ts", frames=15).read_bytes()       # as `ffmpeg ... -f mpegts -` sends
    out = tmp_path / "seg.mp4"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-", "--out", str(out), "--no-progress"],
                          input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert probe(out)["frames"] == 15
    junk = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-", "--out", str(out), "--no-progress"],
                          input=b"<html>not a video</html>", capture_output=True, timeout=120)
    assert junk.returncode == 2                                  # bad input, as for a file
    assert junk.stderr.decode().strip().splitlines()[-1].startswith("segpipe run: error: cannot open standard input:")


def test_dash_redirected_from_a_file_keeps_its_sound(tmp_path):
    import av
    clip = write_clip(tmp_path / "clip.mp4", frames=25, audio="aac")
    out = tmp_path / "seg.mp4"
    with open(clip, "rb") as stdin:                              # segpipe run - --out seg.mp4 < clip.mp4
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-", "--out", str(out),
                               "--no-progress"], stdin=stdin, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == 25 and [a.codec_context.name for a in c.streams.audio] == ["aac"]


def test_dash_on_a_terminal_says_how_to_pipe(monkeypatch, settings):
    monkeypatch.setattr(sys, "stdin", type("Terminal", (), {"isatty": lambda self: True})())
    with pytest.raises(InvalidInputError, match="that is this terminal: pipe a video in"):
        open_source("-", settings.decode)


def test_a_missing_camera_says_how_to_find_one(settings):
    with pytest.raises(InputNotFoundError, match="camera /dev/video99 does not exist.*ls /dev/video"):
        open_source("/dev/video99", settings.decode)
    with pytest.raises(InputNotFoundError, match="camera /dev/video99"):
        open_source(99, settings.decode)


def test_bad_inputs_say_what_to_do(tmp_path, settings, carla_dir):
    s = settings.decode
    with pytest.raises(InputNotFoundError, match="does not exist"):
        open_source(tmp_path / "nope.mp4", s)
    with pytest.raises(InputNotFoundError, match="no images match"):
        open_source(str(tmp_path / "*.jpg"), s)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no images"):
        open_source(tmp_path / "empty", s)
    with pytest.raises(InvalidInputError, match=r"carla holds no images .*: did you mean .*carla/CameraRGB\?$"):
        open_source(carla_dir, s)                       # a dataset folder: its frames are one level down
    (tmp_path / "drives").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "drives" / name).write_bytes(b"\0")
    with pytest.raises(InvalidInputError, match=r"the 2 files in it \(videos\?\) .*pass --out-dir DIR instead"):
        open_source(tmp_path / "drives", s)             # a folder of videos: a batch
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 1000)
    with pytest.raises(MediaError, match="cannot open"):
        open_source(tmp_path / "junk.mp4", s)
