"""``run(src, out, settings)``: segment a video (or camera, URL, image folder) into a video file (or
one frame into an image).

Opens the source and the backend first (bad inputs fail before any thread starts), wires the stages
with ``build_pipeline``, writes the settings used beside the output, runs with a progress bar, and
returns the run's statistics (also written as JSON with ``stats_path``)::

    {"frames", "dropped", "dropped_by": {"queues", "undecodable"[, "stopped"][, "write"]}, "damaged",
     "fps", "wall_s", "backend", "device", "precision",
     "stages": {name: {"busy_s", "p50_ms", "p95_ms"}},       # per process() call (infer: per batch)
     "latency_ms": {"p50", "p95", "p99"},                    # decoder out -> encoded packet written
     "audio",   # with --out: copied (CODEC) | none in the input | not copied: WHY | off | none: an image ...
     "exit"}    # done | input ended early | failed | interrupted | terminated

``dropped`` counts every frame of the source that is not in the output: queue drops (live sources)
plus undecodable frames (damaged, or lost from the stream before decoding: skipped and reported; the run
goes on and succeeds), the frames still on their way through the stages when a run is stopped (a
failure, Ctrl-C, SIGTERM, a quit: ``stopped``, only then), and after a failed write the frames that did
not reach the file (``write``, only then); ``dropped_by`` splits it. ``frames`` is what the output holds.
``damaged`` counts frames kept although the decoder concealed errors in them. A source that ends early
(truncated file) or stalls (no frame for ``decode.stall_timeout_s``) raises PartialInputError (exit 3)
after the output is closed and the statistics are written. Outputs are checked before any work; any
failure once running, SIGTERM (exit 143) and Ctrl-C (exit 130) close the outputs first (an output file
that exists is playable; one with no frame in it is removed) and the message says what they hold. A stop
while starting (opening, loading the model) writes no statistics. A video output is locked while written
(pipeline/encode.py): a second run writing it is refused.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.sizes import format_size
from pipeline.encode import IMAGE_SUFFIXES, Encode
from pipeline.graph import build_pipeline, output_size
from pipeline.image_writer import ImageWriter
from pipeline.masks import masks_replaced
from pipeline.publish import Publish, is_url, network_muxer
from pipeline.runner import Pipeline
from pipeline.settings import Settings, load_settings, save_settings
from pipeline.signals import SigTerm, signals_raise
from pipeline.sources import ArraySource, image_files, is_arrays, is_queue, open_source
from train.data import IMAGE_EXTENSIONS
from train.errors import (InvalidInputError, MediaError, PartialInputError, SegpipeError, SourceStalledError,
                          TerminatedError, plural)
from train.paths import missing_folders, remove_empty, writable_file, writable_folder, write_json

log = logging.getLogger("segpipe.pipeline")


PROGRESS_LOG_S = 30.0   # without a terminal (a log file, CI), progress is a log line this often
MALLOC_ARENAS = 2   # glibc malloc arenas for the whole process (see limit_malloc_arenas)


def apply_threads(settings: Settings) -> None:
    """Process-wide thread pools, set so decode + model + encode share the cores well."""
    if settings.infer.torch_threads > 0 and torch.get_num_threads() != settings.infer.torch_threads:
        torch.set_num_threads(settings.infer.torch_threads)
    cv2.setNumThreads(settings.preprocess.cv2_threads)
    limit_malloc_arenas()


def limit_malloc_arenas() -> None:
    """Frames are allocated in one stage's thread and freed in another's; glibc's default of one malloc
    arena per thread (up to 8 per core) then holds ~50 MB more, creeping up for minutes (soak test:
    benchmarks/soak.py). Two arenas keep resident memory flat at the same frame rate. Done before the
    stage threads start; skipped off glibc or when MALLOC_ARENA_MAX is set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, MALLOC_ARENAS)      # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def load_backend(settings: Settings, frame_size: tuple[int, int] | None = None):
    """The backend the infer settings ask for; ``frame_size`` (H, W) of the source's frames: a portrait
    source gets the checkpoint's input size turned (one source per backend)."""
    import engine

    s = settings.infer
    return engine.load(weights=s.weights, backend=s.backend, precision=s.precision, device=s.device,
                       max_batch=s.batch, input_size=s.size, frame_size=frame_size)


def settings_path(out: str | Path) -> Path:
    return Path(str(out) + ".settings.yaml")


def write_run_settings(out: Path, settings: Settings, pipe, backend, info, size=None, **extra) -> None:
    """``OUT.settings.yaml`` beside a video: the settings used and what the run chose (``size``: the
    written (width, height), where the encoder padded an odd side)."""
    w, h = size or output_size(info.width, info.height, settings.colourise.view)
    try:
        save_settings(settings, settings_path(out), source=info.name, output=str(out), **extra,
                      input=f"{info.kind} {info.width}x{info.height} @ {float(info.fps):g} fps, "
                            f"time base {info.time_base}, frames {info.frames}",
                      output_size=f"{w}x{h}", backend=backend.name, device=str(backend.device),
                      precision=backend.precision, input_size=format_size(backend.input_size),
                      batch=pipe["infer"].batch,
                      queues={q.name: f"{q.policy}, capacity {q.capacity}" for q in pipe.queues})
    except OSError as e:
        raise MediaError(f"cannot write {settings_path(out)}: {e.strerror or e}") from None


def run(src, out: str | Path | None, settings: Settings | None = None, *, masks: str | Path | None = None,
        stats_path: str | Path | None = None, progress: bool = False, backend=None, backend_for=None,
        sinks=(), monitor=None) -> dict:
    """Segment ``src`` into ``out`` (and/or label PNGs in ``masks``, and/or extra ``sinks``); return the
    statistics. ``src``: anything ``open_source`` takes, or an opened source object (``info`` + ``frames()``);
    ``backend``: an engine backend (default: ``engine.load`` with the infer settings), or ``backend_for``:
    a function of the source's frame size (H, W) that gives one (a cache of engines); ``monitor``: called
    with the running Pipeline every tick (0.1 s), e.g. to sample queue depths.

    Outputs are checked before any work (folders exist or can be made, can be written, are not the
    input). A failure once running (a stage error, a stalled source, SIGTERM, Ctrl-C) still closes the
    outputs and writes the statistics; its message then says what the output holds."""
    settings = load_settings(**settings) if isinstance(settings, dict) else settings or load_settings()
    if out is None and masks is None and not sinks:
        raise InvalidInputError("nothing to write: pass --out (a video) and/or --masks (a folder)")
    if is_url(out):
        network_muxer(out)                # an address segpipe cannot stream to is one line now
    local = None if is_url(out) else out  # as given: Path() would drop a trailing slash
    made = missing_folders(local, masks, stats_path)   # (the checks make them, like mkdir -p)
    try:
        check_outputs(src, local, masks, stats_path)
    except BaseException:
        remove_empty(made)
        raise
    out = Path(out) if local is not None else out
    apply_threads(settings)
    with signals_raise():                 # a stop while starting closes what is open (no statistics yet)
        try:
            source, writer, backend, pipe = _start(src, out, settings, masks, sinks, backend, backend_for)
        except BaseException as e:        # nothing was written: the folders made for it go too
            remove_empty(made)
            if isinstance(e, SigTerm):
                raise TerminatedError("terminated (SIGTERM) before the first frame: nothing was written") from None
            raise
        t0, failure, end_progress = time.perf_counter(), None, None
        try:                              # from here a stop is a failure with statistics, and the outputs
            tick, end_progress = _progress(pipe, source, frames_expected(source.info, settings), progress,
                                           monitor)       # are tidied below (no video: no settings beside it)
            pipe.run(on_tick=tick)
        except SigTerm:
            failure = TerminatedError(f"terminated (SIGTERM) after {pipe.sink.delivered} frames")
        except (KeyboardInterrupt, SegpipeError) as e:
            failure = e
        finally:
            if end_progress is not None:
                end_progress()
    wall = time.perf_counter() - t0

    info = source.info
    if isinstance(failure, PartialInputError) and pipe.sink.delivered == 0:
        failure = MediaError(str(failure))           # nothing came through: a failure, not a partial result
    damaged = getattr(source, "damaged", 0)
    stats = collect_stats(pipe, wall, backend, skipped=source.skipped, damaged=damaged)
    if writer is not None and writer.kept is not None and writer.kept < stats["frames"]:
        unwritten = stats["frames"] - writer.kept          # handed to the muxer, but not in the file
        stats["frames"] = writer.kept
        stats["dropped"] += unwritten
        stats["dropped_by"]["write"] = unwritten
    frames_in = pipe["decode"].count
    stats["exit"] = _exit_reason(failure, source, frames_in)
    if writer is not None:
        stats["audio"] = writer.sound
    if stats_path is not None:
        write_json(stats_path, stats, "the statistics", log)
    if isinstance(out, Path) and not out.exists():   # no video (nothing encoded): no settings for it
        settings_path(out).unlink(missing_ok=True)
    # no file outputs (segment(), sinks only): nothing to say about them
    written = pipe["masks"].written if masks is not None else 0
    done = "; " + _closed(out, masks, stats["frames"], written) if out is not None or masks is not None else ""
    if isinstance(failure, KeyboardInterrupt):
        on_the_way = stats["dropped_by"].get("stopped", 0)
        log.warning("interrupted after %d frames%s%s", stats["frames"],
                    f" ({on_the_way} more were on the way, dropped)" if on_the_way else "", done)
        raise failure
    if failure is not None:
        failure.args = (f"{failure}{done}",)        # the same error, saying what the output holds
        failure.stats = stats                       # and what the run did (a batch reports an early end's)
        raise failure

    _warn_losses(pipe, source, stats["frames"], frames_in, damaged)
    if isinstance(source, ArraySource) and source.error is not None:    # the caller's error, after the frames
        if isinstance(source.error, SegpipeError):                        # before it
            source.error.args = (f"{source.error}{done}",)
        raise source.error
    if source.error is not None and frames_in == 0:
        hint = " (an MP4 over HTTP needs a server with range requests, or one written with " \
               "-movflags +faststart)" if info.name.startswith("http") else ""
        raise MediaError(f"could not read a frame from {info.name}: {source.error}{hint}{done}")
    if source.error is not None:
        ended = PartialInputError(f"{info.name} ended early: {frames_in} frames were read ({source.error}){done}")
        ended.stats = stats
        raise ended
    return stats


def _start(src, out, settings: Settings, masks, sinks, backend, backend_for=None):
    """Open the source, the output (before the model loads or builds: a bad one fails first) and the
    backend, and wire the pipeline: ``(source, writer, backend, pipe)``. Whatever fails (or a stop) closes
    what was opened."""
    source = src if hasattr(src, "frames") and hasattr(src, "info") else open_within(src, settings.decode)
    info, writer = source.info, None
    try:                                  # until the pipeline runs (and its decoder owns it), close it here
        if out is not None:
            writer = open_output(out, info, frames_expected(info, settings), settings)
        if backend is None:
            size = (info.height, info.width)
            backend = backend_for(size) if backend_for else load_backend(settings, size)
        pipe = build_pipeline(source, backend, settings, masks=masks, sinks=list(sinks), encode=writer)
        if isinstance(out, Path):         # a stream has no place beside it for them
            write_run_settings(out, settings, pipe, backend, info, size=getattr(writer, "size", None),
                               codec=writer.codec, masks=masks and str(masks))
    except BaseException:
        source.close()
        if writer is not None:            # (a video is opened, and locked, only once the pipeline runs)
            writer.teardown()
        raise
    return source, writer, backend, pipe


def frames_expected(info, settings: Settings) -> int | None:
    """The frames a run should give: the source's, at most ``decode.max_frames`` (None: not known)."""
    total, most = info.frames, settings.decode.max_frames
    if most is not None:
        total = min(total, most) if total else most
    return total


def _progress(pipe, source, total: int | None, progress: bool, monitor):
    """The run's ``(tick, end)``: each tick updates a progress bar on a terminal, or with ``progress`` logs
    a line every PROGRESS_LOG_S (a log file), then calls ``monitor``; ``end`` ticks once more and closes."""
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, unit="frame", desc="segment", dynamic_ncols=True, file=sys.stderr,
                   smoothing=0.1)
    t0 = time.perf_counter()
    next_log = [t0 + PROGRESS_LOG_S]

    def tick():
        if bar is not None:
            bar.update(pipe.sink.delivered - bar.n)
            if pipe.drops or source.skipped:
                bar.set_postfix(dropped=pipe.drops + source.skipped, refresh=False)
        elif progress and time.perf_counter() >= next_log[0]:     # a log file: a line now and then, not \r
            next_log[0] += PROGRESS_LOG_S
            done = pipe.sink.delivered
            log.info("segment: %d%s frames, %.1f fps, dropped %d", done, f"/{total}" if total else "",
                     done / (time.perf_counter() - t0), pipe.drops + source.skipped)
        if monitor is not None:
            monitor(pipe)

    def end():
        tick()
        if bar is not None:
            bar.close()

    return tick, end


def _warn_losses(pipe, source, frames: int, frames_in: int, damaged: int) -> None:
    """Never silent: where the frames not in the output went, and the damaged ones kept."""
    if pipe.drops or source.skipped:
        where = ", ".join(f"{q.drops} at {q.name} ({q.policy})" for q in pipe.queues if q.drops)
        withheld, lost = getattr(source, "withheld", 0), getattr(source, "lost", 0)
        damaged_packets = source.skipped - withheld - lost     # undecodable packets (images: unreadable files)
        parts = [f"{damaged_packets} damaged" if damaged_packets else "",
                 f"{withheld} {'that depend on them' if damaged_packets else 'the decoder did not give back'}"
                 if withheld else "",
                 f"{lost} lost from the stream (their packets never came)" if lost else ""]
        detail = ": " + ", ".join(p for p in parts if p) if withheld or lost else ""
        log.warning("dropped %d frames: %s%s", pipe.drops + source.skipped, where or "none by the queues",
                    f"; {source.skipped} undecodable{detail} (skipped, the rest kept)" if source.skipped else "")
    if damaged:
        log.warning("%d frames decoded with errors (damaged data, concealed by the decoder) were kept", damaged)
    if frames + pipe.drops != frames_in:             # every frame accounted for, or say so
        log.warning("%d frames decoded but %d written and %d dropped", frames_in, frames, pipe.drops)


def _exit_reason(failure, source, frames_in: int) -> str:
    """How the run ended, for the statistics (the exit status says the same in a number)."""
    if isinstance(failure, KeyboardInterrupt):
        return "interrupted"
    if isinstance(failure, TerminatedError):
        return "terminated"
    if isinstance(failure, PartialInputError) or (failure is None and source.error is not None and frames_in):
        return "input ended early"
    if failure is not None or source.error is not None:
        return "failed"
    return "done"


def open_within(src, decode):
    """``open_source``, but a source that gives nothing for ``decode.stall_timeout_s`` while it is opened
    (a pipe with no writer, a hung network drive) is an error, not a hang (its thread is abandoned)."""
    timeout = decode.stall_timeout_s
    if not timeout or is_arrays(src) and (hasattr(src, "__len__") or is_queue(src)):  # in memory; a queue
        return open_source(src, decode)                                                 # times itself
    result, lock = {}, threading.Lock()

    def target():
        try:
            source = open_source(src, decode)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            with lock:
                result["error"] = e
            return
        with lock:
            if not result.get("abandoned"):
                result["source"] = source
                return
        log.debug("%s opened after its timeout: closed", src)
        source.close()              # opened after the caller gave up on it: no one else will close it

    opener = threading.Thread(target=target, name="segpipe-open", daemon=True)
    opener.start()
    deadline = time.monotonic() + timeout
    try:
        while opener.is_alive() and time.monotonic() < deadline:
            opener.join(0.1)        # short waits: Ctrl-C may reach another thread, and is seen when this wakes
    finally:
        with lock:                  # still opening (or Ctrl-C): what it opens later is the opener's to close
            result["abandoned"] = "source" not in result and "error" not in result
    if result["abandoned"]:
        if is_arrays(src):              # a generator: its thread stays inside it, waiting for the next frame
            raise SourceStalledError(f"your frame iterable gave no frame for {timeout:g} s: the producer stalled; "
                                     f"pass a queue.Queue of frames instead of a generator that waits on one (it "
                                     f"is waited on in steps), or raise decode.stall_timeout_s (0 waits forever)")
        what = "standard input" if str(src) == "-" else src
        raise MediaError(f"opening {what} gave nothing for {timeout:g} s: the source stalled (a pipe with no "
                         f"writer, a hung network drive, a camera that does not answer?); if it is only slow, "
                         f"raise decode.stall_timeout_s (0 waits forever)")
    if "error" in result:
        raise result["error"]
    return result["source"]


def open_output(out: Path | str, info, frames: int | None, settings: Settings) -> Encode | ImageWriter | Publish:
    """The sink for ``--out``: a network stream for a URL, an image for a one-frame input (``seg.png``), else
    a video file."""
    w, h = output_size(info.width, info.height, settings.colourise.view)
    if is_url(out):
        return Publish.from_settings(out, w, h, info, settings.encode)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        return ImageWriter(out, frames, info.name, settings.encode.png_compression)
    return Encode.from_settings(out, w, h, info, settings.encode, audio=True)


def check_outputs(src, out: str | Path | None, masks, stats_path) -> None:
    """Refuse, before any work, outputs that cannot be written: the input itself, a folder given as
    --out, a folder that cannot be made, a read-only place. Missing folders are made (like mkdir -p)."""
    if out is not None:
        if what := as_input(out, src):
            raise InvalidInputError(f"--out {out} is {what}: write to another file")
        out = writable_file(out, "--out", "seg.mp4")
    if masks is not None:
        masks = Path(masks)
        if masks.exists() and not masks.is_dir():
            raise InvalidInputError(f"--masks {masks} is a file: name a folder for the PNGs")
        if out is not None and out.absolute() == masks.absolute():
            raise InvalidInputError(f"--masks {masks} is also --out: name another folder for the masks, e.g. "
                                    f"--masks {out.with_suffix('')}_masks")
        if as_input(masks, src):                        # the input folder (a file is refused above)
            raise InvalidInputError(f"--masks {masks} is the input folder: the PNGs would mix with its "
                                    f"frames; name another folder")
        writable_folder(masks, "--masks")
        if replaced := masks_replaced(masks, input_images(src)):
            more = f" and {plural(len(replaced) - 1, 'other')}" if len(replaced) > 1 else ""
            raise InvalidInputError(f"--masks {masks} already holds {replaced[0]}{more} named like the input images, "
                                    f"which this run would write over (a data set's own masks?): empty the folder or "
                                    f"name another")
        if old := sum(1 for _ in masks.glob("*.png")):
            log.warning("--masks %s already holds %d PNGs: those this run names alike are replaced, the "
                        "others stay (empty the folder for only this run's)", masks, old)
    if stats_path is not None:
        writable_file(stats_path, "--stats", "stats.json")
        check_report(stats_path, "--stats", src, ("the --out video", out),
                     ("the settings file written beside --out", out and settings_path(out)))


def check_report(path, flag: str, src, *files) -> None:
    """Refuse a report (``--stats``, ``--json``: written at the end) that would replace the input ``src`` or
    another of the command's ``files``: (what, path) pairs, a None path skipped."""
    if what := as_input(path, src):
        raise InvalidInputError(f"{flag} {path} is {what}: the report would replace it; name another file")
    for what, other in files:
        if other is not None and Path(other).resolve() == Path(path).resolve():
            raise InvalidInputError(f"{flag} {path} is {what}: the report would replace it; name another file")


def files_read(config, weights) -> tuple:
    """The files a command reads besides its input, as (what, path) pairs: a report must not replace them."""
    return ("the --config file", config), ("the --weights checkpoint", weights)


def input_images(src) -> list[str] | None:
    """The image files of ``src`` (a folder, glob or one image, named or opened), else None."""
    if hasattr(src, "files"):
        return src.files
    if not isinstance(src, (str, Path)):
        return None
    if (files := image_files(src)) is not None:
        return files
    return [str(src)] if Path(src).suffix.lower() in IMAGE_EXTENSIONS and Path(src).is_file() else None


def as_input(path, src) -> str | None:
    """What ``path`` is of the input ``src``: "the input itself", "one of the input images" (of a folder or
    glob; ``src.files`` once opened), or None. Writing there would destroy it."""
    target = Path(path).resolve()
    if isinstance(src, (str, Path)) and Path(src).exists() and target == Path(src).resolve():
        return "the input itself"
    if any(Path(f).resolve() == target for f in input_images(src) or ()):
        return "one of the input images"
    return None


def _closed(out, masks, frames: int, masks_written: int = 0) -> str:
    """What the outputs hold after a stop or a failure. The masks stage runs before the encoder, so a stop
    can leave a mask or two of frames the video never got: their count is said then."""
    parts = []
    if is_url(out):
        parts.append(f"nothing was sent to {out}" if frames == 0 else
                     f"the {plural(frames, 'frame')} done were sent to {out}")
    elif out is not None:
        if Path(out).exists():
            parts.append(f"{out} is complete with the {plural(frames, 'frame')} done")
        else:
            parts.append(f"nothing was written to {out} (it does not exist)")
    if masks_written and (out is None or masks_written == frames):
        parts.append(f"their masks are in {masks}")
    elif masks_written:
        parts.append(f"{plural(masks_written, 'mask')} of this run are in {masks}")
    return "; ".join(parts) or "nothing was written"


def percentiles_ms(values_s, qs) -> list[float]:
    """Percentiles ``qs`` of durations in seconds, in milliseconds (zeros when there are none)."""
    if not len(values_s):
        return [0.0 for _ in qs]
    return [round(float(v) * 1000.0, 3) for v in np.percentile(np.asarray(values_s), qs)]


def collect_stats(pipe: Pipeline, wall_s: float, backend, skipped: int = 0, damaged: int = 0) -> dict:
    frames = pipe.sink.delivered
    stopped = pipe["decode"].count - frames - pipe.drops     # decoded, still on the way when the run stopped
    stages = {}
    for stage in pipe.stages:
        p50, p95 = percentiles_ms(stage.call_s, (50, 95))
        stages[stage.name] = {"busy_s": round(stage.busy_s, 4), "p50_ms": p50, "p95_ms": p95}
    p50, p95, p99 = percentiles_ms(pipe.sink.latency_s, (50, 95, 99))
    dropped_by = {"queues": int(pipe.drops), "undecodable": int(skipped)}
    if stopped > 0:
        dropped_by["stopped"] = int(stopped)
    return {
        "frames": int(frames),
        "dropped": sum(dropped_by.values()),
        "dropped_by": dropped_by,
        "damaged": int(damaged),            # kept, but decoded with errors (concealed by the decoder)
        "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
        "wall_s": round(wall_s, 4),
        "backend": str(backend.name),
        "device": str(backend.device),
        "precision": str(backend.precision),
        "stages": stages,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
    }


def summary(stats: dict, out=None) -> str:
    slowest = max(stats["stages"].items(), key=lambda kv: kv[1]["busy_s"])[0] if stats["stages"] else "-"
    where = f" -> {out}" if out else ""
    return (f"{plural(stats['frames'], 'frame')} in {stats['wall_s']:.1f} s ({stats['fps']:.1f} fps) on "
            f"{stats['backend']} ({stats['device']}, {stats['precision']}), dropped {stats['dropped']}, latency p50 "
            f"{stats['latency_ms']['p50']:.0f} ms / p95 {stats['latency_ms']['p95']:.0f} ms, "
            f"busiest stage {slowest}{where}")
