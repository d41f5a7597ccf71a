"""`segpipe run` / `segpipe bench` through pipeline.cli.main (return codes); real-process signals: tests/reliability."""
import json
import os
import re
import signal
import threading
import time

import cv2
import numpy as np
import pytest

from pipehelp import CARLA_VIDEO, SHARED, StubBackend, probe, write_clip, write_video
from pipeline.cli import main
from train.classes import CARLA_PALETTE

STATS_KEYS = {"frames", "dropped", "dropped_by", "damaged", "fps", "wall_s", "backend", "device", "precision",
              "stages", "latency_ms", "audio", "exit"}


def test_run_writes_video_stats_and_settings(tmp_path, clip, capsys):
    out, stats = tmp_path / "seg.mp4", tmp_path / "s.json"
    assert main(["run", str(clip), "--out", str(out), "--stats", str(stats), "--no-progress",
                 "--view", "side-by-side", "--legend", "--batch", "2"]) == 0
    data = json.loads(stats.read_text())
    assert set(data) == STATS_KEYS and data["frames"] == 12 and data["dropped"] == 0
    assert probe(out)["frames"] == 12 and probe(out)["width"] == 192
    assert (tmp_path / "seg.mp4.settings.yaml").exists()
    assert "12 frames in" in capsys.readouterr().out


def test_a_photo_in_gives_a_labelled_image_out(tmp_path, carla_dir, capsys):
    """The shipped model on a real CARLA frame: the mask view of the image is the labels of --masks."""
    photo = sorted((carla_dir / "CameraRGB").iterdir())[0]
    out, masks = tmp_path / "seg.png", tmp_path / "masks"
    assert main(["run", str(photo), "--out", str(out), "--masks", str(masks), "--view", "mask", "--no-progress"]) == 0
    labels = cv2.imread(str(masks / f"{photo.stem}.png"), cv2.IMREAD_UNCHANGED)     # named after the frame
    palette = np.asarray(CARLA_PALETTE, np.uint8)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), palette[labels])
    assert labels.shape == cv2.imread(str(photo)).shape[:2] and len(np.unique(labels)) >= 3
    assert "1 frame in" in capsys.readouterr().out


def test_a_portrait_photo_runs_the_model_turned(tmp_path, carla_dir):
    """A portrait frame is not stretched into the landscape 192x256: the model runs at 256x192."""
    photo = tmp_path / "portrait.png"
    cv2.imwrite(str(photo), cv2.imread(str(sorted((carla_dir / "CameraRGB").iterdir())[0]))[:, 70:250])
    out = tmp_path / "seg.png"
    assert main(["run", str(photo), "--out", str(out), "--no-progress"]) == 0
    assert "input_size: 256x192" in (tmp_path / "seg.png.settings.yaml").read_text()
    assert cv2.imread(str(out)).shape == (240, 180, 3)


@pytest.mark.skipif(not CARLA_VIDEO.exists(), reason=f"needs the shared CARLA data at {SHARED}")
def test_real_carla_clip_agrees_with_the_ground_truth(tmp_path):
    n = 40
    masks = tmp_path / "masks"
    assert main(["run", str(CARLA_VIDEO), "--out", str(tmp_path / "seg.mp4"), "--masks", str(masks),
                 "--frames", str(n), "--no-progress"]) == 0
    truth = sorted((SHARED / "carla" / "CameraMask").iterdir())[:n]
    ours = sorted(masks.iterdir())
    assert [p.name for p in ours] == [f"{i:06d}.png" for i in range(n)]
    agree = []
    for mine, gt in zip(ours, truth):
        pred = cv2.imread(str(mine), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)[..., 2]      # BGRA: red is index 2
        assert pred.shape == label.shape == (480, 640)
        agree.append(np.mean(pred == label))
    assert np.mean(agree) > 0.7, f"pixel agreement {np.mean(agree):.3f}"
    assert probe(tmp_path / "seg.mp4")["frames"] == n


@pytest.mark.parametrize("args,code,message", [
    (["run", "/nonexistent/drive.mp4", "--out", "{tmp}/o.mp4"], 2, "does not exist"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--size", "12x"], 2, "write it like 144x192"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--size", "100x100"], 2, "use --size"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--alpha", "2"], 2, "outside 0..1"),
    (["run", "{clip}"], 2, "nothing to write"),
    (["run", "{clip}", "--out", "{clip}"], 2, "is the input itself"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--codec", "nosuchcodec"], 2, "cannot encode with"),
    (["run", "{clip}", "--out", "{tmp}/o.png", "--frames", "1", "--codec", "libx265"], 2, "--codec is for videos"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--codec", "aac"], 2, "encodes audio, not video"),
    (["run", "{clip}", "--out", "{tmp}/o.mkv", "--codec", "subrip"], 2, "encodes subtitles, not video"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--out-dir", "{tmp}/d"], 2, "both name where to write"),
    (["run", "{clip}", "--out", "s3://bucket/seg.mp4"], 2, "segpipe streams out to rtsp://"),
    (["run", "{clip}", "--out", "udp://127.0.0.1:99999"], 2, "its port is not 1..65535: name one, e.g. "
                                                           "udp://127.0.0.1:5000"),   # FFmpeg: port 34463
    (["run", "{clip}", "--out", "tcp://127.0.0.1"], 2, "it names no port"),
    (["run", "{clip}", "--out", "udp://[::1]"], 2, "it names no port: name one, e.g. udp://[::1]:5000"),
    (["run", "udp://[::1:5000", "--out", "{tmp}/o.mp4"], 2, "cannot open udp://[::1:5000: not a valid URL"),
    (["run", "udp://127.0.0.1:70000", "--out", "{tmp}/o.mp4"], 2, "cannot open udp://127.0.0.1:70000: its port"),
    (["run", "{clip}", "--out", "{tmp}/o.mp4", "--config", "{tmp}/missing.yaml"], 2, "does not exist"),
    (["bench", "--video", "{clip}", "--batch", "1,4"], 2, "one number"),
    (["bench", "--frames", "10"], 2, "pass --video FILE with it"),
])
def test_user_errors_are_one_line_and_exit_code(tmp_path, clip, capsys, args, code, message):
    args = [a.format(tmp=tmp_path, clip=clip) for a in args]
    assert main(args + (["--no-progress"] if args[0] == "run" else [])) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"segpipe {args[0]}: error: ") and message in err[-1], err


def test_a_cache_it_cannot_write_does_not_stop_a_run(tmp_path, clip, capsys, monkeypatch, caplog):
    from engine import cache
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "a-file" / "engines"))   # as HOME=/proc, or read-only
    monkeypatch.setattr(cache, "_scratch", None)
    with caplog.at_level("WARNING", logger="segpipe.engine"):
        code = main(["run", str(clip), "--out", str(tmp_path / "o.mp4"), "--frames", "4", "--backend", "onnxruntime",
                     "--no-progress"])      # its ONNX export is stored (onnxruntime: no race, quicker)
    assert code == 0 and probe(tmp_path / "o.mp4")["frames"] == 4, capsys.readouterr().err
    assert any("cannot write the engine cache" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_a_crf_the_encoder_would_clamp_is_refused(tmp_path, clip, capsys, codec):
    (tmp_path / "c.yaml").write_text("encode:\n  crf: 99\n")
    assert main(["run", str(clip), "--out", str(tmp_path / "o.mp4"), "--codec", codec, "--config",
                 str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: encode.crf 99 is outside {codec}'s 0..51 (lower is "
                                                    f"better and larger; 18-28 is usual, 23 the default)")
    assert not (tmp_path / "o.mp4").exists()


def test_a_hardware_encoder_without_its_hardware_says_so(tmp_path, clip, capsys):
    from pipeline.encode import codec_type
    if codec_type("h264_nvenc") is None:
        pytest.skip("this PyAV build has no NVENC encoder")
    code = main(["run", str(clip), "--out", str(tmp_path / "o.mp4"), "--codec", "h264_nvenc", "--frames", "2",
                 "--no-progress"])
    if code == 0:
        pytest.skip("this machine has an NVIDIA GPU that NVENC opened on")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "is a hardware encoder and needs its GPU" in last and "use --codec libx264" in last, last


def test_sigterm_closes_the_output_and_exits_143(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", frames=400, width=160, height=120)
    out = tmp_path / "seg.mp4"

    def term_when_writing():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=term_when_writing, daemon=True).start()
    assert main(["run", str(clip), "--out", str(out), "--no-progress", "--batch", "1",
                 "--stats", str(tmp_path / "s.json")]) == 143
    assert 0 < probe(out)["frames"] < 400
    assert json.loads((tmp_path / "s.json").read_text())["exit"] == "terminated"


def test_bench_video_reports_stages_pipeline_and_naive(tmp_path, clip, settings):
    from pipeline.bench import bench_video, format_report

    r = bench_video(clip, settings, frames=10, backend=StubBackend())
    assert set(r["stages_fps"]) == {"decode", "preprocess", "infer", "colourise", "encode"}
    assert all(v > 0 for v in r["stages_fps"].values())
    assert r["frames"] == 10 and r["pipeline"]["frames"] == 10
    assert r["efficiency"] == pytest.approx(r["pipeline_fps"] / min(r["stages_fps"].values()), rel=1e-2)
    assert r["speedup"] == pytest.approx(r["pipeline_fps"] / r["naive_fps"], rel=1e-2)
    assert "efficiency" in format_report(r)


def test_bench_video_of_unknown_length(tmp_path, settings):
    """A raw H.264 stream says neither its length nor its duration: bench reads it to the end."""
    from pipeline.bench import bench_video
    from pipeline.sources import open_source

    raw = write_video(tmp_path / "raw.h264", frames=15)
    source = open_source(raw, settings.decode)
    source.close()
    assert source.info.frames is None
    assert bench_video(raw, settings, backend=StubBackend())["frames"] == 15


def test_bench_cli_dispatches(tmp_path, clip, monkeypatch, capsys):
    assert main(["bench", "--video", str(clip), "--frames", "6", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["frames"] == 6
    import engine.bench
    calls = []
    monkeypatch.setattr(engine.bench, "model_bench", lambda **kw: calls.append(kw) or [{"backend": "x"}])
    monkeypatch.setattr(engine.bench, "format_rows", lambda rows: "ROWS")
    assert main(["bench", "--backend", "onnxruntime,torch-cpu", "--batch", "1,2", "--size", "96x128"]) == 0
    assert calls == [{"weights": None, "backends": ["onnxruntime", "torch-cpu"], "precisions": None,
                      "batches": (1, 2), "size": "96x128"}]
    assert "ROWS" in capsys.readouterr().out


@pytest.mark.parametrize("busy", [None, "load average 3.1 on 2 cores"])
def test_bench_says_when_the_cpu_was_busy(tmp_path, monkeypatch, caplog, busy):
    import engine.bench
    import engine.loader
    monkeypatch.setattr(engine.loader, "machine_busy", lambda: busy)
    monkeypatch.setattr(engine.bench, "model_bench", lambda **kw: [{"backend": "x", "fps": 50.0}])
    monkeypatch.setattr(engine.bench, "format_rows", lambda rows: "ROWS")
    with caplog.at_level("WARNING", logger="segpipe.bench"):
        assert main(["bench", "--model-only", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text()) == [{"backend": "x", "fps": 50.0, "cpu_busy": busy}]
    said = [r.getMessage() for r in caplog.records if r.name == "segpipe.bench"]
    assert said == ([] if busy is None else [f"the CPU was busy while this ran ({busy}): the figures above are "
                                             f"low, and torch-cpu's most; run it again on a quiet machine"])


def test_without_a_terminal_progress_is_log_lines_not_a_bar(tmp_path, clip, monkeypatch, capsys, caplog):
    """stderr to a file (CI, nohup): no carriage-return bar; a progress line every PROGRESS_LOG_S."""
    import logging

    import pipeline.run

    monkeypatch.setattr(pipeline.run, "PROGRESS_LOG_S", 0.0)
    monkeypatch.setattr(pipeline.run, "load_backend", lambda *args, **kwargs: StubBackend())
    caplog.set_level(logging.INFO, logger="segpipe")
    assert main(["run", str(clip), "--out", str(tmp_path / "seg.mp4")]) == 0
    assert "\r" not in capsys.readouterr().err
    assert re.search(r"segment: \d+/12 frames, [\d.]+ fps, dropped 0", caplog.text)
