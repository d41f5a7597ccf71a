"""`segpipe run` and `segpipe bench`."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine import PRECISIONS

RUN_EPILOG = """examples:
  segpipe run drive.mp4 --out seg.mp4                       overlay with the shipped model
  segpipe run drive.mp4 --out seg.mp4 --view side-by-side --legend --stats stats.json
  segpipe run drive.mp4 --out seg.mp4 --masks masks/        also write label PNGs (masks/000000.png ...)
  segpipe run 'frames/*.jpg' --out seg.mp4                  an image glob (quote it), or a folder
  segpipe run photo.jpg --out seg.png --legend               one image in, one image out
  segpipe run rtsp://camera.local/stream --out live.mp4     a live stream: drops the oldest if behind
  segpipe run rtsp://camera.local/stream --out rtsp://server:8554/seg   and streamed on (RTSP push, H.264)
  segpipe run drive.mp4 --out udp://127.0.0.1:5000          MPEG-TS over UDP, at the video's own rate
  segpipe run 0 --out webcam.mp4 --frames 300               a camera (index or /dev/videoN)
  ffmpeg -i in.mov -f mpegts - | segpipe run - --out seg.mp4   a pipe: - reads standard input
  segpipe run drive.mp4 --out seg.mkv --codec libx265 --backend onnxruntime --batch 8
  segpipe run 'drives/*.mp4' --out-dir seg/ --stats batch.json     many inputs, concurrently (--workers N)
  segpipe run @drives.txt --out-dir /shared/seg --ray auto          on a Ray cluster (pip install 'segpipe[ray]')

Defaults come from configs/pipeline.yaml (one section per stage); flags override them, and the
settings a run used are written to OUT.settings.yaml. Exit status: 0 done, 1 media/stage failure,
2 bad input or option, 3 the input ended early (what decoded is written), 130 Ctrl-C, 143 SIGTERM.
With several inputs: 0 if every file was done, 1 if any failed (a failure is retried once unless the
input itself is at fault, then listed in the summary; the others go on).
"""

BENCH_EPILOG = """examples:
  segpipe bench --video drive.mp4 --json bench.json     each stage alone, the pipeline, a naive loop
  segpipe bench --video drive.mp4 --frames 200 --batch 8
  segpipe bench --model-only                            inference speed of each backend
  segpipe bench --model-only --backend onnxruntime,torch-cpu --batch 1,4,8 --size 288x384

With --video: efficiency = pipeline fps / slowest stage alone, speedup = pipeline fps / naive loop
(read a frame, infer batch 1, colourise, write, one after another, same model and backend).
Without --video, bench measures the model alone (--model-only).
"""


def register(sub, formatter) -> None:
    from pipeline.queues import POLICIES
    from pipeline.settings import VIEWS, Settings

    d = Settings()   # the built-in defaults, identical to configs/pipeline.yaml
    # Unset options stay absent (SUPPRESS), so the config file's values apply and --help shows them.
    p = sub.add_parser("run", argument_default=argparse.SUPPRESS, help="segment a video, stream, camera or image folder into a video",
                       formatter_class=formatter, epilog=RUN_EPILOG,
                       description="Segment SRC frame by frame with a streaming pipeline (decode, preprocess, "
                                   "batched inference, colourise, encode running concurrently) and write OUT.")
    p.add_argument("src", nargs="+", metavar="SRC",
                   help="video file, URL (rtsp/http/udp/file...), camera index or /dev/videoN, image folder "
                        "or glob, - for standard input; or several inputs (paths, a glob or folder of videos, "
                        "@list.txt or list.txt with one path/URL per line) with --out-dir")
    p.add_argument("--out", help="output video (the container follows the extension: .mp4, .mkv ...); an "
                   "image (.png, .jpg ...) for a one-frame input; or a live stream: rtsp://, rtmp://, udp://, "
                   "tcp://, srt:// (a file is sent at its own frame rate)")
    p.add_argument("--out-dir", metavar="DIR", help="several inputs: one DIR/NAME.mp4 per input (same base name; "
                                                   "inputs in other folders keep their folders below DIR)")
    p.add_argument("--workers", type=int, metavar="N", help="several inputs: pipelines at once (default: one per "
                                                           "GPU, or one per CPU core; with --ray: one per "
                                                           "GPU or CPU of the cluster)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the inputs on a Ray cluster: auto, a head address (ray://host:10001), or none for "
                        "a local cluster; put it after the inputs or write --ray=ADDRESS "
                        "(needs pip install 'segpipe[ray]')")
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--backend", help=f"inference backend: auto, torch-cpu, onnxruntime, torch-cuda, tensorrt ... "
                                     f"(config: {d.infer.backend})")
    p.add_argument("--precision", choices=PRECISIONS,
                   help=f"fp16: reduced precision where it is fast and matches FP32 (FP16 on GPUs, BF16 on CPUs "
                        f"with native BF16); fp32: full (config: {d.infer.precision})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (config: the backend's choice)")
    p.add_argument("--batch", type=int, help=f"frames per inference call, at most (config: {d.infer.batch})")
    p.add_argument("--size", metavar="HxW", help="model input size, e.g. 288x384 (config: the checkpoint's, turned for a portrait source)")
    p.add_argument("--view", choices=VIEWS, help=f"what to draw (config: {d.colourise.view})")
    p.add_argument("--alpha", type=float, help=f"overlay opacity 0..1 (config: {d.colourise.alpha})")
    p.add_argument("--legend", action="store_true", help="draw the classes present")
    p.add_argument("--masks", metavar="DIR", help="also write each frame's labels as PNG: DIR/000000.png ... "
                                                    "(images keep their names; several inputs: DIR/NAME/...)")
    p.add_argument("--stats", metavar="FILE", help="write the run's statistics as JSON")
    p.add_argument("--config", metavar="FILE", help="pipeline settings (default: configs/pipeline.yaml)")
    p.add_argument("--codec", help=f"output codec, e.g. libx264, libx265, libvpx-vp9; auto: H.264, VP9 for .webm "
                                          f"(config: {d.encode.codec})")
    p.add_argument("--frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--no-audio", dest="audio", action="store_false",
                   help=f"leave the input's sound out (config: encode.audio: {str(d.encode.audio).lower()}: "
                        f"copied as it is)")
    p.add_argument("--policy", choices=["auto", *POLICIES],
                   help="queue policy after the source: auto = block for files, drop-oldest for live "
                        "(config: auto)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_command, progress=True)

    p = sub.add_parser("bench", argument_default=argparse.SUPPRESS, help="measure the pipeline's stages, the whole, and a naive loop; or the model",
                       formatter_class=formatter, epilog=BENCH_EPILOG,
                       description="Benchmark the streaming pipeline on a video, or the model alone.")
    p.add_argument("--video", help="video to benchmark the pipeline on")
    p.add_argument("--frames", type=int, metavar="N", help="frames to use from the video (default: all)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--model-only", action="store_true", help="benchmark only the model (engine backends)")
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--backend", help="backend (pipeline) or comma-separated backends (model-only)")
    p.add_argument("--precision", help="precision (pipeline) or comma-separated precisions (model-only)")
    p.add_argument("--batch", help=f"pipeline batch (config: {d.infer.batch}), or comma-separated batches "
                                   f"(model-only: 1,4,8)")
    p.add_argument("--size", metavar="HxW", help="model input size (default: the checkpoint's)")
    p.add_argument("--config", metavar="FILE", help="pipeline settings (default: configs/pipeline.yaml)")
    p.set_defaults(func=bench_command, model_only=False)


class _Options:
    """The parsed options; an option left unset reads as None (the config's value then applies)."""

    def __init__(self, namespace):
        self.__dict__.update(vars(namespace))

    def __getattr__(self, name):
        return None


def _settings(args, **extra):
    from pipeline.settings import load_settings

    return load_settings(args.config, infer={"weights": args.weights, "backend": args.backend,
                                             "precision": args.precision, "device": args.device,
                                             "batch": extra.pop("batch", getattr(args, "batch", None)),
                                             "size": args.size},
                         **extra)


def run_command(args) -> int:
    from pipeline.encode import IMAGE_SUFFIXES
    from pipeline.run import check_report, files_read, run, summary
    from train.errors import InvalidInputError

    args = _Options(args)
    srcs = list(args.src or [])
    if args.ray and not _ray_address(args.ray):      # `--ray a.mp4 b.mp4`: a.mp4 is an input, not an address
        srcs, args.ray = [args.ray, *srcs], ""
    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers {args.workers} must be >= 1")
    batch = args.out_dir is not None or args.ray is not None or args.workers is not None
    if not batch:
        from pipeline.batch import is_many
        batch = is_many(srcs)
    if args.out is not None and args.out_dir is not None:
        raise InvalidInputError(f"--out {args.out} and --out-dir {args.out_dir} both name where to write: pass "
                                f"--out for one input, --out-dir for one output per input")
    if batch and args.out is not None:
        from train.data import IMAGE_EXTENSIONS
        if len(srcs) > 1 and all(Path(s).suffix.lower() in IMAGE_EXTENSIONS for s in srcs):
            raise InvalidInputError(f"{len(srcs)} images were given, as the shell expands an unquoted glob: quote "
                                    f"it for one video of them all, e.g. 'frames/*.jpg', or pass --out-dir DIR "
                                    f"for an output per image")
        raise InvalidInputError("--out names one output: with several inputs (or --workers/--ray) pass "
                                "--out-dir DIR for one video per input")
    if not batch and args.out is None and args.masks is None:
        raise InvalidInputError("nothing to write: pass --out OUT.mp4 (and/or --masks DIR)")
    if args.codec is not None and args.out is not None and Path(args.out).suffix.lower() in IMAGE_SUFFIXES:
        raise InvalidInputError(f"--codec is for videos, and --out {args.out} is an image (its extension sets "
                                f"the format): leave --codec out, or name a video (e.g. seg.mp4)")
    settings = _settings(args,
                         decode={"max_frames": args.frames},
                         colourise={"view": args.view, "alpha": args.alpha, "legend": args.legend},
                         encode={"codec": args.codec, "audio": args.audio},
                         queues={"policy": args.policy})
    if args.stats is not None:            # run() checks it against the input and outputs; these are named here
        check_report(args.stats, "--stats", None, *files_read(args.config, args.weights))
    if batch:
        from pipeline.batch import run_many
        return run_many(srcs, settings, out_dir=args.out_dir, masks=args.masks, stats=args.stats,
                        workers=args.workers, ray=args.ray, progress=args.progress)
    stats = run(srcs[0], args.out, settings, masks=args.masks, stats_path=args.stats, progress=args.progress)
    print(summary(stats, args.out))
    return 0


def _ray_address(text: str) -> bool:
    """auto, ray://host:port, host:port: an address; an existing path, glob or list is an input."""
    from pipeline.batch import is_list

    return not (Path(text).exists() or is_list(text) or any(c in text for c in "*?[")
                or Path(text).suffix.lower() in (".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts"))


def _ints(text: str | None, what: str) -> list[int] | None:
    from train.errors import InvalidInputError

    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} is not a comma-separated list of integers, e.g. 1,4,8") from None
    if not values or min(values) < 1:
        raise InvalidInputError(f"{what} {text!r} must list positive integers, e.g. 1,4,8")
    return values


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def bench_command(args) -> int:
    from engine.loader import machine_busy
    from pipeline.run import check_report, files_read
    from train.errors import BackendUnavailableError, InvalidInputError
    from train.paths import writable_file

    args = _Options(args)
    if args.json:
        writable_file(args.json, "--json", "bench.json")
        check_report(args.json, "--json", args.video, *files_read(args.config, args.weights))
    if args.video and args.model_only:
        raise InvalidInputError("--video and --model-only measure different things: pass one of them")
    if args.frames is not None and not args.video:
        raise InvalidInputError("--frames counts a video's frames: pass --video FILE with it (the model-only "
                                "benchmark times a fixed number of calls)")
    if not args.video:
        from engine.bench import format_rows, model_bench

        batches = _ints(args.batch, "--batch") or [1, 4, 8]
        busy = machine_busy()
        rows = model_bench(weights=args.weights, backends=_names(args.backend),
                           precisions=_names(args.precision), batches=tuple(batches), size=args.size)
        if not rows:                      # each backend skipped has said why in a warning
            raise BackendUnavailableError("no backend could run here: nothing was measured (the warnings above say why)")
        busy = busy or machine_busy()
        print(format_rows(rows))
        if args.json:
            Path(args.json).write_text(json.dumps([{**row, "cpu_busy": busy} for row in rows], indent=2, default=str))
        warn_if_busy(busy)
        return 0

    from pipeline.bench import bench_video, format_report

    batches = _ints(args.batch, "--batch")
    if batches and len(batches) > 1:
        raise InvalidInputError("with --video, --batch is one number (the pipeline's batch), e.g. --batch 4")
    for name, value in (("--backend", args.backend), ("--precision", args.precision)):
        if value and "," in value:
            raise InvalidInputError(f"with --video, {name} is one value, not a list")
    if args.frames is not None and args.frames < 1:
        raise InvalidInputError(f"--frames {args.frames} must be >= 1")
    settings = _settings(args, batch=batches[0] if batches else None)
    busy = machine_busy()
    report = bench_video(args.video, settings, frames=args.frames)
    report["cpu_busy"] = busy = busy or machine_busy()
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    warn_if_busy(busy)
    return 0


def warn_if_busy(busy: str | None) -> None:
    """Other work on the CPU slows every figure, torch's threads most (they wait for each other)."""
    if busy:
        logging.getLogger("segpipe.bench").warning(
            "the CPU was busy while this ran (%s): the figures above are low, and torch-cpu's most; run it "
            "again on a quiet machine", busy)
