"""Bad inputs, through `segpipe run`: one line naming the problem and the fix, a non-zero exit, no
traceback, and no output left behind unless it is playable.

Exit codes: 2 bad input or option (nothing done), 3 the input ended early (what decoded is written),
0 success (damaged packets are skipped, counted and reported).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faultmedia import corrupt_packets, decode_index, frame_image, probe, write_audio_only, write_video
from pipeline.run import settings_path
from train.checkpoint import make_checkpoint, save_checkpoint
from train.model import create_model


def refused(result, code: int, message: str, out):
    """The run was refused: exit ``code``, one error line saying ``message``, no traceback, no output."""
    got, last, err, _ = result
    assert got == code, err
    assert last.startswith("segpipe run: error: ") and message in last, err
    assert "Traceback" not in err
    assert not out.exists() and not settings_path(out).exists()


def clip(tmp_path, name="clip.mp4", frames=40, **kw):
    return write_video(tmp_path / name, frames, **kw)


# --- inputs that are not videos ------------------------------------------------------------------------
def missing(tmp_path):
    return tmp_path / "nope.mp4"


def empty_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    return tmp_path / "folder"


def zero_bytes(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    return tmp_path / "empty.mp4"


def text(tmp_path):
    (tmp_path / "page.mp4").write_text("<html><body>404 Not Found</body></html>\n")
    return tmp_path / "page.mp4"


def audio_only(tmp_path):
    return write_audio_only(tmp_path / "speech.m4a")


def mp4_cut_before_its_index(tmp_path):
    data = clip(tmp_path).read_bytes()                  # PyAV writes the index (moov) at the end
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.3)])
    return tmp_path / "cut.mp4"


@pytest.mark.parametrize("make, message", [
    (missing, "does not exist: pass a video file"),
    (empty_folder, "holds no images"),
    (zero_bytes, "is empty (0 bytes): an interrupted download or copy? get the file again"),
    (text, "is text, not a video (it starts with '<html><body>404 Not Found"),
    (audio_only, "has no video stream (audio-only)"),
    (mp4_cut_before_its_index, "cut short, without its index (the moov atom"),
], ids=lambda v: getattr(v, "__name__", "")[:30])
def test_an_input_that_is_not_a_video_is_refused_in_one_line(tmp_path, cli, make, message):
    out = tmp_path / "out" / "seg.mp4"
    refused(cli("run", make(tmp_path), "--out", out), 2, message, out)


# --- truncated and damaged videos ----------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", [
    ("clip.mkv", {}),
    ("clip.mkv", {"audio": "aac"}),                      # two streams: the video's own DURATION tag tells
    ("clip.mp4", {"container_options": {"movflags": "+faststart"}}),
    ("clip.ts", {"audio": "aac"}),                       # no length at all: cut inside a 188-byte packet
], ids=["mkv", "mkv-with-sound", "mp4-faststart", "ts-with-sound"])
def test_a_truncated_video_is_segmented_as_far_as_it_goes_and_exits_3(tmp_path, cli, name, kw):
    data = clip(tmp_path, name, **kw).read_bytes()
    cut = tmp_path / f"cut{Path(name).suffix}"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    out = tmp_path / "seg.mp4"
    code, last, err, _ = cli("run", cut, "--out", out, "--stats", tmp_path / "s.json")
    assert code == 3, err
    assert "ended early" in last and "is the file truncated?" in last and "Traceback" not in err
    read = int(last.split("ended early: ")[1].split(" frames were read")[0])
    assert 3 <= read < 40
    assert probe(out)["frames"] == read                 # playable, with every frame that decoded
    assert f"{out} is complete with the {read} frames done" in last
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["exit"] == "input ended early" and stats["frames"] == read


def test_a_complete_matroska_file_that_starts_late_is_not_called_truncated(tmp_path, cli):
    """Its tracks' DURATION tags say where they end (6 s), not how long they are (2 s): a later piece of
    `ffmpeg -f segment`, or a cut with -copyts."""
    late = clip(tmp_path, "late.mkv", frames=40, pts=list(range(80, 120)), time_base=Fraction(1, 20), audio="aac")
    code, last, err, _ = cli("run", late, "--out", tmp_path / "seg.mp4")
    assert code == 0 and "ended early" not in err, err
    assert probe(tmp_path / "seg.mp4")["frames"] == 40


def test_a_truncated_or_empty_image_in_a_folder_is_skipped_counted_and_reported(tmp_path, cli):
    """cv2.imread would return a JPEG cut short half grey, as if whole: it is a skipped frame instead
    (and cv2.imdecode raises on an empty file: also a skipped frame)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(frames / f"{i:03d}.jpg"), rng.integers(0, 255, (48, 64, 3), np.uint8))
    data = (frames / "002.jpg").read_bytes()
    (frames / "002.jpg").write_bytes(data[: len(data) // 2])          # cut short, as by a failed copy
    (frames / "003.jpg").write_bytes(b"")                             # and one empty
    assert cv2.imread(str(frames / "002.jpg")) is not None
    code, _, err, _ = cli("run", frames, "--out", tmp_path / "seg.mp4", "--stats", tmp_path / "s.json")
    assert code == 0, err
    assert "skipped 002.jpg: not a readable image" in err and "skipped 003.jpg" in err and "dropped 2 frames" in err
    stats = json.loads((tmp_path / "s.json").read_text())
    assert (stats["frames"], stats["dropped_by"]["undecodable"], stats["exit"]) == (2, 2, "done")
    assert probe(tmp_path / "seg.mp4")["frames"] == 2
    (frames / "000.jpg").write_bytes(b"")                             # the first one empty: still no traceback
    code, last, err, _ = cli("run", frames, "--out", tmp_path / "seg2.mp4")
    assert code == 0 and "Traceback" not in err, err


def test_corrupted_packets_are_skipped_counted_and_reported(tmp_path, cli):
    """H.264: the 3 damaged packets, and the frames the decoder cannot rebuild without them, are missing;
    every one is counted, the frames after keep their numbers, and the run succeeds."""
    bad = corrupt_packets(clip(tmp_path), tmp_path / "bad.mp4", [15, 16, 17])
    out, stats, masks = tmp_path / "seg.mp4", tmp_path / "s.json", tmp_path / "masks"
    code, _, err, stdout = cli("run", bad, "--out", out, "--stats", stats, "--masks", masks)
    assert code == 0, err
    assert err.count("skipped an undecodable packet") == 3 and "3 damaged" in err
    data = json.loads(stats.read_text())
    frames, dropped = data["frames"], data["dropped"]
    assert frames + dropped == 40 and dropped >= 3 and f"dropped {dropped}" in stdout
    assert data["dropped_by"] == {"queues": 0, "undecodable": dropped}
    assert probe(out)["frames"] == frames
    kept = sorted(int(p.stem) for p in masks.iterdir())
    assert len(kept) == frames and kept[:15] == list(range(15)) and kept[-1] == 39
    assert not {15, 16, 17} & set(kept)


def test_a_damaged_stretch_keeps_every_decodable_frame(tmp_path, cli):
    """MJPEG: every frame stands alone, so exactly the damaged ones are missing, the rest are right."""
    good = clip(tmp_path, "clip.avi", codec="mjpeg", pix_fmt="yuvj420p")
    bad = corrupt_packets(good, tmp_path / "bad.avi", list(range(10, 20)))
    out, masks = tmp_path / "seg.mp4", tmp_path / "masks"
    code, _, err, _ = cli("run", bad, "--out", out, "--masks", masks)
    assert code == 0, err
    kept = [i for i in range(40) if not 10 <= i < 20]
    assert sorted(int(p.stem) for p in masks.iterdir()) == kept          # named by their place in the source
    assert [decode_index(cv2.imread(str(masks / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)) for i in kept] == kept
    assert probe(out)["frames"] == 30


# --- outputs that cannot be written ---------------------------------------------------------------------
def test_an_output_in_a_read_only_folder_is_refused_before_any_work(tmp_path, cli, read_only_dir):
    out = read_only_dir / "seg.mp4"
    refused(cli("run", clip(tmp_path), "--out", out), 2, "cannot write in", out)
    sub = read_only_dir / "new" / "seg.mp4"
    refused(cli("run", clip(tmp_path), "--out", sub), 2, "cannot create the folder", sub)


@pytest.mark.parametrize("where, message", [
    ("input", "is the input itself: write to another file"),
    ("folder", "is a folder: name a file in it"),
    ("under-a-file", "is a file, not a folder"),
    ("no-extension", "has no extension, so the container is unknown"),
    ("unknown-extension", "FFmpeg cannot write .xyz files: use .mp4 or .mkv"),
    ("codec-the-container-cannot-hold", ".webm files cannot hold libx264"),
    ("image", "has 40 frames: name a video (e.g. seg.mp4), pass --frames 1 for its first frame, or --masks DIR"),
    ("gif", "segpipe does not write GIFs (256 colours): write a video (seg.mp4) and convert it"),
    ("new-folder/", "ends with a slash but is not a folder: name a file, e.g. --out "),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, cli, where, message):
    src = clip(tmp_path)
    (tmp_path / "folder").mkdir()
    out = {"input": src, "folder": tmp_path / "folder", "under-a-file": src / "seg.mp4",
           "no-extension": tmp_path / "seg", "unknown-extension": tmp_path / "seg.xyz",
           "codec-the-container-cannot-hold": tmp_path / "seg.webm", "image": tmp_path / "%06d.png",
           "gif": tmp_path / "seg.gif", "new-folder/": f"{tmp_path}/new/"}[where]
    before = src.read_bytes()
    codec = ["--codec", "libx264"] if where == "codec-the-container-cannot-hold" else []
    code, last, err, _ = cli("run", src, "--out", out, *codec)
    assert code == 2 and message in last and "Traceback" not in err, err
    assert src.read_bytes() == before                                   # the input is untouched
    if where not in ("input", "folder"):
        assert not Path(out).exists()
    assert not settings_path(out).exists()


def test_masks_named_like_the_video_are_refused_before_any_work(tmp_path, cli):
    src, out = clip(tmp_path), tmp_path / "seg.mp4"
    code, last, err, _ = cli("run", src, "--out", out, "--masks", out)
    assert code == 2 and f"--masks {out} is also --out: name another folder" in last and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["live", "{clip}", "--record", "{bad}/live.mp4"],
    ["live", "{clip}", "--record", "{tmp}/live.mp4", "--stats", "{bad}/live.json"],
    ["bench", "--video", "{clip}", "--json", "{bad}/bench.json"],
    ["run", "{clip}", "{clip}", "--out-dir", "{tmp}/seg", "--stats", "{bad}/batch.json"],
    ["run", "{clip}", "{clip}", "--out-dir", "{bad}/seg"],
    ["export", "--onnx", "{bad}/unet.onnx"],
    ["eval", "--data", "{carla}", "--json", "{bad}/metrics.json"],
    ["train", "--data", "{carla}", "--out", "{bad}/run"],
], ids=lambda a: " ".join(a[:1] + [x for x in a if x.startswith("--")]))
def test_every_command_refuses_an_output_it_cannot_write_before_any_work(tmp_path, cli, carla_dir, args):
    src = clip(tmp_path, frames=5)
    blocker = tmp_path / "blocker.txt"                  # a file where a folder is needed
    blocker.write_text("x")
    args = [a.format(clip=src, bad=blocker, tmp=tmp_path, carla=carla_dir) for a in args]
    code, last, err, _ = cli(*args)
    assert code == 2 and f"segpipe {args[0]}: error:" in last and "is a file, not a folder" in last, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker.txt", "clip.mp4"]   # nothing was written


def test_a_missing_output_folder_is_made(tmp_path, cli):
    """Documented choice: like mkdir -p (folders that cannot be made are refused, above)."""
    out = tmp_path / "new" / "deeper" / "seg.mp4"
    code, _, err, _ = cli("run", clip(tmp_path, frames=5), "--out", out)
    assert code == 0, err
    assert probe(out)["frames"] == 5


# --- checkpoints ---------------------------------------------------------------------------------------
@pytest.fixture
def checkpoints(tmp_path):
    model = create_model("unet_tiny")
    good = tmp_path / "good.pt"
    save_checkpoint(make_checkpoint(model, "unet_tiny", (32, 48)), good)
    (tmp_path / "corrupt.pt").write_bytes(torch.randint(0, 256, (4000,), dtype=torch.uint8).numpy().tobytes())
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    wrong = make_checkpoint(model, "unet_tiny", (32, 48))
    wrong["model_config"]["base_filters"] *= 2                          # weights of another architecture
    save_checkpoint(wrong, tmp_path / "wrong.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "bare.pt")  # a plain state_dict, not ours
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("corrupt.pt", "is corrupt or truncated (or not a checkpoint): re-download or retrain it"),
    ("truncated.pt", "is corrupt or truncated"),
    ("wrong.pt", "does not match its U-Net config"),
    ("bare.pt", "is not a segpipe checkpoint"),
])
def test_a_bad_checkpoint_is_refused_in_one_line(tmp_path, cli, checkpoints, name, message):
    out = tmp_path / "seg.mp4"
    refused(cli("run", clip(tmp_path, frames=3), "--out", out, "--weights", checkpoints / name, stub=False),
            2, message, out)


# --- option values -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, config, message", [
    (["--view", "heatmap"], None, "argument --view: invalid choice: 'heatmap'"),
    (["--batch", "four"], None, "argument --batch: invalid int value: 'four'"),
    (["--codec", "nosuchcodec"], None, "cannot encode with 'nosuchcodec'"),
    (["--codec", "h264_nvenc"], None, "cannot start the h264_nvenc encoder"),
    ([], "decode: {thread_type: TURBO}", "decode.thread_type 'TURBO' is unknown: use one of AUTO"),
    ([], "infer: {batch: four}", "infer.batch is 'four' (str) but must be int"),
    ([], "decode: {stall_timeout_s: -1}", "decode.stall_timeout_s -1.0 must be >= 0"),
    ([], "encode: {preset: warp}", "cannot start the libx264 encoder"),
    ([], "live: {batch: 0}", "--batch 0 must be >= 1"),
])
def test_an_unknown_option_value_is_one_line_and_exit_2(tmp_path, cli, args, config, message):
    out = tmp_path / "seg.mp4"
    if config:
        (tmp_path / "p.yaml").write_text(config)
        args = [*args, "--config", tmp_path / "p.yaml"]
    refused(cli("run", clip(tmp_path, frames=3), "--out", out, *args), 2, message, out)


def test_an_unknown_backend_is_one_line_and_exit_2(tmp_path, cli):
    out = tmp_path / "seg.mp4"
    refused(cli("run", clip(tmp_path, frames=3), "--out", out, "--backend", "quantum", stub=False), 2,
            "unknown backend 'quantum' (--backend, infer.backend): choose one of", out)


@pytest.mark.parametrize("flag, message", [
    ("--config", "is a folder: pass a YAML file"),
    ("--weights", "is a directory: pass the .pt file inside it"),
    ("--stats", "is a folder: name a file"),
])
def test_a_folder_where_a_file_is_expected_is_one_line(tmp_path, cli, flag, message):
    (tmp_path / "folder").mkdir()
    out = tmp_path / "seg.mp4"
    refused(cli("run", clip(tmp_path, frames=3), "--out", out, flag, tmp_path / "folder", stub=flag != "--weights"),
            2, message, out)


def test_output_settings_are_checked_before_the_model_loads(tmp_path, cli, monkeypatch):
    """A model can take minutes to build (TensorRT): a typo in --out or --codec must not wait for it."""
    import pipeline.run

    loads = []
    monkeypatch.setattr(pipeline.run, "load_backend", lambda *args, **kwargs: loads.append(1))
    src = clip(tmp_path, frames=3)
    for args in (["--out", tmp_path / "seg.webm", "--codec", "libx264"], ["--out", tmp_path / "seg.mp4", "--codec", "nosuchcodec"],
                 ["--out", tmp_path / "seg.xyz"], ["--out", src]):
        code, _, err, _ = cli("run", src, *args, stub=False)
        assert code == 2, err
    assert loads == []


def test_bench_of_a_truncated_video_says_it_measured_fewer_frames(tmp_path, cli):
    data = clip(tmp_path, "clip.mkv").read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    code, _, err, _ = cli("bench", "--video", cut, "--frames", 40)
    assert code == 0, err
    assert f"{cut} gave " in err and " of the 40 frames asked for (cut short or damaged)" in err


# --- what the shell made of the command ----------------------------------------------------------------
def test_an_unquoted_image_glob_is_told_to_be_quoted(tmp_path, cli):
    images = []
    for i in range(3):
        images.append(tmp_path / f"f{i}.jpg")
        cv2.imwrite(str(images[-1]), frame_image(i, 96, 64))
    out = tmp_path / "seg.mp4"
    refused(cli("run", *images, "--out", out), 2, "3 images were given, as the shell expands an unquoted glob: "
                                                  "quote it for one video of them all", out)


def test_an_exported_model_as_weights_names_the_checkpoint_it_needs(tmp_path, cli):
    onnx = tmp_path / "unet.onnx"
    onnx.write_bytes(b"\x08\x07")                       # (never read: the name says what it is)
    out = tmp_path / "seg.mp4"
    refused(cli("run", clip(tmp_path, frames=3), "--out", out, "--weights", onnx, stub=False), 2,
            f"{onnx} is an exported model: pass the .pt checkpoint it was made from", out)
