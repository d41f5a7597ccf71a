"""Outputs that would land on another file of the command: a report (--stats, --json) naming the input or
another output, --out naming one of an image folder's files, a video another process is writing. Each is
refused in one line (exit 2) before any work, and the file it would have replaced is left as it was.
A stop while starting (before the pipeline runs) writes no statistics and leaves no output (README).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
from fractions import Fraction
from pathlib import Path

import cv2
import pytest
import torch

import pipeline.run
from faultmedia import StubBackend, frame_image, probe, write_video
from pipeline.encode import Encode
from pipeline.run import settings_path
from train.errors import InvalidInputError


def refused(result, command: str, message: str):
    """Exit 2, the last stderr line is the one-line error with ``message``, no traceback."""
    code, last, err, _ = result
    assert code == 2, err
    assert last == f"segpipe {command}: error: {message}", err
    assert "Traceback" not in err


@pytest.fixture
def files(tmp_path, cli):
    """An input clip, an earlier run's output and its settings, and a config: what a report could replace."""
    clip = write_video(tmp_path / "in.mp4", 12)
    out = tmp_path / "seg.mp4"
    assert cli("run", clip, "--out", out)[0] == 0
    config = tmp_path / "my.yaml"
    config.write_text("encode:\n  crf: 30\n")
    return {"input": clip, "out": out, "settings": settings_path(out), "config": config}


def snapshot(files) -> dict:
    return {name: path.read_bytes() for name, path in files.items()}


# --- a report that names another file of the command ----------------------------------------------------
@pytest.mark.parametrize("victim, what", [
    ("input", "the input itself"),
    ("out", "the --out video"),
    ("settings", "the settings file written beside --out"),
    ("config", "the --config file"),
])
def test_run_stats_never_replace_the_input_or_an_output(cli, files, victim, what):
    before = snapshot(files)
    report = files[victim]
    refused(cli("run", files["input"], "--out", files["out"], "--config", files["config"], "--stats", report),
            "run", f"--stats {report} is {what}: the report would replace it; name another file")
    assert snapshot(files) == before


@pytest.mark.parametrize("victim, what", [
    ("input", "the input itself"),
    ("record", "the --record video"),
    ("settings", "the settings file written beside --record"),
    ("config", "the --config file"),
])
def test_live_stats_never_replace_the_input_or_the_recording(cli, files, victim, what):
    files = {**files, "record": files["out"]}
    before = snapshot(files)
    report = files[victim]
    refused(cli("live", files["input"], "--record", files["record"], "--config", files["config"],
                "--stats", report),
            "live", f"--stats {report} is {what}: the report would replace it; name another file")
    assert snapshot(files) == before


@pytest.mark.parametrize("victim, what", [("input", "the input itself"), ("config", "the --config file")])
def test_bench_json_never_replaces_the_video_or_the_config(cli, files, victim, what):
    before = snapshot(files)
    report = files[victim]
    refused(cli("bench", "--video", files["input"], "--frames", 8, "--config", files["config"], "--json", report),
            "bench", f"--json {report} is {what}: the report would replace it; name another file")
    assert snapshot(files) == before


def test_batch_stats_never_replace_an_input(tmp_path, cli):
    a, b = write_video(tmp_path / "a.mp4", 6), write_video(tmp_path / "b.mp4", 6)
    before = a.read_bytes()
    refused(cli("run", a, b, "--out-dir", tmp_path / "seg", "--stats", a),
            "run", f"--stats {a} is the input {a}: the report would replace it; name another file")
    assert a.read_bytes() == before and not (tmp_path / "seg" / "a.mp4").exists()


# --- an image folder or glob: its files are inputs ------------------------------------------------------
@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"photo{i}.jpg"), cv2.cvtColor(frame_image(i, 96, 64), cv2.COLOR_RGB2BGR))
    return folder


@pytest.mark.parametrize("form", ["folder", "glob"])
@pytest.mark.parametrize("flag, extra", [("--out", ["--frames", "1"]), ("--stats", ["--out", "seg.mp4"])])
def test_an_output_that_is_one_of_the_input_images_is_refused(tmp_path, cli, photos, form, flag, extra):
    victim = photos / "photo1.jpg"
    before = victim.read_bytes()
    src = photos if form == "folder" else f"{photos}/*.jpg"
    extra = [str(tmp_path / e) if e.endswith(".mp4") else e for e in extra]
    then = "write to another file" if flag == "--out" else "the report would replace it; name another file"
    refused(cli("run", src, flag, victim, *extra), "run", f"{flag} {victim} is one of the input images: {then}")
    assert victim.read_bytes() == before
    assert not (tmp_path / "seg.mp4").exists()


# --- two writers of one file ----------------------------------------------------------------------------
def test_an_out_another_process_is_writing_is_refused_and_left_alone(cli, files):
    out = files["out"]
    before = snapshot(files)
    with open(out, "ab") as other:                      # another segpipe writing it holds this lock
        fcntl.flock(other, fcntl.LOCK_EX)
        refused(cli("run", files["input"], "--out", out), "run",
                f"--out {out} is being written by another process: wait for it to end, or name another file")
        refused(cli("live", files["input"], "--record", out), "live",
                f"--record {out} is being written by another process: wait for it to end, or name another file")
        assert snapshot(files) == before                # neither the video nor its settings were touched
    assert cli("run", files["input"], "--out", out, "--frames", 5)[0] == 0     # free again
    assert probe(out)["frames"] == 5


def test_the_lock_is_held_from_opening_to_closing_and_creates_nothing_before(tmp_path):
    out = tmp_path / "seg.mp4"
    writer = Encode(out, 96, 64, Fraction(20), Fraction(1, 20))
    assert not out.exists()                             # constructing it (before any work) makes no file
    writer.setup()
    with open(out, "rb") as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        writer.teardown()                               # nothing encoded: removed, and unlocked
        assert not out.exists()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_of_two_runs_started_together_the_second_to_open_the_file_stops(tmp_path):
    out = tmp_path / "seg.mp4"
    first, second = (Encode(out, 96, 64, Fraction(20), Fraction(1, 20)) for _ in range(2))
    first.setup()
    with pytest.raises(InvalidInputError, match=f"--out {out} is being written by another process"):
        second.setup()
    second.teardown()
    assert out.exists()                                 # the first run's file: not the second's to remove
    first.teardown()


# --- a stop while starting --------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code, last", [
    (signal.SIGINT, 130, "segpipe run: interrupted"),
    (signal.SIGTERM, 143, "segpipe run: error: terminated (SIGTERM) before the first frame: nothing was written"),
])
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "earlier-output"])
def test_a_stop_while_the_model_loads_leaves_no_output_and_no_stats(tmp_path, cli, monkeypatch, sig, code, last,
                                                                       earlier):
    clip = write_video(tmp_path / "in.mp4", 12)
    out, stats = tmp_path / "seg.mp4", tmp_path / "s.json"
    if earlier:
        assert cli("run", clip, "--out", out)[0] == 0
    before = out.read_bytes() if earlier else None

    def loading(*args, **kwargs):                 # the signal comes while the model loads
        os.kill(os.getpid(), sig)
        return StubBackend()

    monkeypatch.setattr(pipeline.run, "load_backend", loading)
    got, line, err, _ = cli("run", clip, "--out", out, "--stats", stats, stub=False)
    assert (got, line) == (code, last), err
    assert "Traceback" not in err
    assert not stats.exists()                     # README: no statistics before the pipeline runs
    assert (out.read_bytes() if out.exists() else None) == before     # the earlier video, or none
    if not earlier:
        assert not settings_path(out).exists()


@pytest.mark.parametrize("how", ["bad weights", "SIGINT while loading", "live, bad weights"])
def test_a_start_that_fails_leaves_no_folders_behind(tmp_path, cli, monkeypatch, how):
    """The output checks make missing folders (mkdir -p); a start that writes nothing takes them back."""
    clip = write_video(tmp_path / "in.mp4", 12)
    new = tmp_path / "new"
    args = ["run", clip, "--out", new / "a" / "seg.mp4", "--masks", new / "m", "--stats", new / "b" / "s.json"]
    if how.startswith("live"):
        got, line, err, _ = cli("live", clip, "--record", new / "a" / "rec.mp4", "--stats", new / "b" / "s.json",
                                "--weights", clip, stub=False)
    elif how == "bad weights":
        got, line, err, _ = cli(*args, "--weights", clip, stub=False)
    else:
        monkeypatch.setattr(pipeline.run, "load_backend", lambda *a, **k: os.kill(os.getpid(), signal.SIGINT))
        got, line, err, _ = cli(*args, stub=False)
    assert got in (2, 130) and "Traceback" not in err, err
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_live_stopped_while_the_model_loads_leaves_no_recording(tmp_path, cli, monkeypatch):
    clip = write_video(tmp_path / "in.mp4", 12)
    rec, stats = tmp_path / "rec.mp4", tmp_path / "s.json"

    def loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return StubBackend()

    monkeypatch.setattr(pipeline.run, "load_backend", loading)
    got, line, err, _ = cli("live", clip, "--record", rec, "--stats", stats, stub=False)
    assert (got, line) == (143, "segpipe live: error: terminated (SIGTERM) before the first frame: nothing was "
                                "recorded"), err
    assert not rec.exists() and not settings_path(rec).exists() and not stats.exists()


# --- a benchmark that measured nothing --------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_with_no_backend_that_runs_fails(tmp_path, cli):
    report = tmp_path / "bench.json"
    code, last, err, out = cli("bench", "--model-only", "--backend", "torch-cuda", "--batch", 1, "--json", report)
    assert code == 2, err         # as `run --backend torch-cuda` here: the machine lacks what was asked for
    assert last == "segpipe bench: error: no backend could run here: nothing was measured (the warnings above " \
                   "say why)"
    assert "needs a CUDA GPU" in err and not report.exists() and out == ""


def test_stats_of_a_run_still_written(tmp_path, cli):
    """The checks leave ordinary reports alone."""
    clip = write_video(tmp_path / "in.mp4", 6)
    stats = tmp_path / "reports" / "s.json"
    assert cli("run", clip, "--out", tmp_path / "seg.mp4", "--stats", stats)[0] == 0
    assert json.loads(stats.read_text())["exit"] == "done"


# --- live and bench read image folders too ----------------------------------------------------------------
@pytest.mark.parametrize("form", ["folder", "glob"])
@pytest.mark.parametrize("command", ["live", "bench"])
def test_live_and_bench_reports_never_replace_an_input_image(tmp_path, cli, photos, form, command):
    victim = photos / "photo1.jpg"
    before = victim.read_bytes()
    src = photos if form == "folder" else f"{photos}/*.jpg"
    if command == "live":
        args, flag = ("live", src, "--record", tmp_path / "rec.mp4", "--stats", victim), "--stats"
    else:
        args, flag = ("bench", "--video", src, "--frames", 3, "--json", victim), "--json"
    refused(cli(*args), command, f"{flag} {victim} is one of the input images: the report would replace it; "
                                 f"name another file")
    assert victim.read_bytes() == before


# --- eval reads a data set and a checkpoint ---------------------------------------------------------------
@pytest.fixture
def dataset(tmp_path, carla_dir):
    import shutil
    return Path(shutil.copytree(carla_dir, tmp_path / "carla"))


@pytest.mark.parametrize("flag, where, what", [
    ("--json", "CameraRGB/metrics.json", "is inside the data set's CameraRGB/ folder"),
    ("--json", "CameraRGB/000003.png", "is inside the data set's CameraRGB/ folder"),
    ("--grid", "CameraMask/grid.png", "is inside the data set's CameraMask/ folder"),
    ("--json", "weights.pt", "is the --weights checkpoint"),
    ("--json", "out/", "ends with a slash but is not a folder"),
])
def test_eval_never_writes_over_what_it_reads(tmp_path, cli, dataset, flag, where, what):
    weights = tmp_path / "weights.pt"
    weights.write_bytes((Path(__file__).parents[2] / "train/weights/unet_carla.pt").read_bytes())
    before = {p: p.read_bytes() for p in [*dataset.rglob("*.*"), weights]}
    touched = {d: d.stat().st_mtime_ns for d in dataset.iterdir()}    # a file made and removed there moves it
    target = f"{tmp_path}/{where}" if where.endswith("/") else (weights if where == "weights.pt" else dataset / where)
    code, last, err, _ = cli("eval", "--data", dataset, "--weights", weights, flag, target)
    assert code == 2 and last.startswith(f"segpipe eval: error: {flag} {target} {what}: ") and "Traceback" not in err
    assert {p: p.read_bytes() for p in [*dataset.rglob("*.*"), weights]} == before     # and nothing new
    assert {d: d.stat().st_mtime_ns for d in dataset.iterdir()} == touched


@pytest.mark.parametrize("args, message", [
    (["--json", "m.png"], "--json {t}/m.png is also the grid picture's name: name the metrics .json, e.g. --json m.json"),
    (["--json", "m.json", "--grid", "m.json"], "--json and --grid both name {t}/m.json: name two files"),
])
def test_eval_json_and_its_grid_are_two_files(tmp_path, cli, carla_dir, args, message):
    code, last, err, _ = cli("eval", "--data", carla_dir, *[a if a.startswith("-") else tmp_path / a for a in args])
    assert code == 2 and last.endswith(message.format(t=tmp_path)) and "Traceback" not in err
    assert not list(tmp_path.glob("m.*"))


def test_eval_says_where_its_grid_went(tmp_path, cli, carla_dir):
    code, _, err, out = cli("eval", "--data", carla_dir, "--json", tmp_path / "m.json")
    assert code == 0, err
    assert f"wrote {tmp_path / 'm.json'}" in out and f"wrote {tmp_path / 'm.png'}" in out
