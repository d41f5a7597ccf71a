"""``run(src, out, settings)``: segment a video (or camera, URL, image folder) into a video file.

Opens the source and the backend first (bad inputs fail before any thread starts), wires the stages
with ``build_pipeline``, writes the settings used beside the output, runs with a progress bar, and
returns the run's statistics (also written as JSON with ``stats_path``)::

    {"frames", "dropped", "fps", "wall_s", "backend", "device",
     "stages": {name: {"busy_s", "p50_ms", "p95_ms"}},       # per process() call (infer: per batch)
     "latency_ms": {"p50", "p95", "p99"}}                    # decoder out -> encoded packet written

``dropped`` counts every frame of the source that is not in the output: queue drops (live sources)
plus undecodable frames. A source that ends early (truncated file) raises PartialInputError after the
output is closed and the statistics are written.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.graph import build_pipeline, output_size
from pipeline.runner import Pipeline
from pipeline.settings import Settings, format_size, load_settings, save_settings
from pipeline.sources import open_source
from train.errors import InvalidInputError, MediaError, PartialInputError, TerminatedError

log = logging.getLogger("segpipe.pipeline")


class _SigTerm(BaseException):
    pass


@contextmanager
def sigterm_raises():
    """In the main thread, turn SIGTERM into an exception so the pipeline stops and closes its output."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _SigTerm

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def apply_threads(settings: Settings) -> None:
    """Process-wide thread pools, set so decode + model + encode share the cores well."""
    if settings.infer.torch_threads > 0 and torch.get_num_threads() != settings.infer.torch_threads:
        torch.set_num_threads(settings.infer.torch_threads)
    cv2.setNumThreads(settings.preprocess.cv2_threads)


def load_backend(settings: Settings):
    import engine

    s = settings.infer
    return engine.load(weights=s.weights, backend=s.backend, precision=s.precision, device=s.device,
                       max_batch=s.batch, input_size=s.size)


def settings_path(out: str | Path) -> Path:
    return Path(str(out) + ".settings.yaml")


def run(src, out: str | Path | None, settings: Settings | None = None, *, masks: str | Path | None = None,
        stats_path: str | Path | None = None, progress: bool = False, backend=None, sinks=()) -> dict:
    """Segment ``src`` into ``out`` (and/or label PNGs in ``masks``, and/or extra ``sinks``); return the
    statistics. ``src``: anything ``open_source`` takes, or an opened source object (``info`` + ``frames()``);
    ``backend``: an engine backend (default: ``engine.load`` with the infer settings)."""
    settings = settings or load_settings()
    if out is None and masks is None and not sinks:
        raise InvalidInputError("nothing to write: pass --out (a video) and/or --masks (a folder)")
    if out is not None:
        out = Path(out)
        if isinstance(src, (str, Path)) and Path(src).exists() and out.resolve() == Path(src).resolve():
            raise InvalidInputError(f"--out {out} is the input itself: write to another file")
        out.parent.mkdir(parents=True, exist_ok=True)
    apply_threads(settings)
    source = src if hasattr(src, "frames") and hasattr(src, "info") else open_source(src, settings.decode)
    info = source.info
    try:                                  # until the pipeline runs (and its decoder owns it), close it here
        backend = backend if backend is not None else load_backend(settings)
        pipe = build_pipeline(source, backend, settings, out=out, masks=masks, sinks=list(sinks))
        if out is not None:
            w, h = output_size(info.width, info.height, settings.colourise.view)
            save_settings(settings, settings_path(out), source=info.name, output=str(out),
                          masks=masks and str(masks),
                          input=f"{info.kind} {info.width}x{info.height} @ {float(info.fps):g} fps, "
                                f"time base {info.time_base}, frames {info.frames}",
                          output_size=f"{w}x{h}", backend=backend.name, device=str(backend.device),
                          precision=backend.precision, input_size=format_size(backend.input_size),
                          batch=pipe["infer"].batch,
                          queues={q.name: f"{q.policy}, capacity {q.capacity}" for q in pipe.queues})
    except BaseException:
        source.close()
        raise

    total = info.frames
    if settings.decode.max_frames is not None:
        total = min(total, settings.decode.max_frames) if total else settings.decode.max_frames
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="frame", desc="segment", dynamic_ncols=True, file=sys.stderr,
                   smoothing=0.1)

    def tick():
        if bar is not None:
            bar.update(pipe.sink.delivered - bar.n)
            if pipe.drops or source.skipped:
                bar.set_postfix(dropped=pipe.drops + source.skipped, refresh=False)

    t0 = time.perf_counter()
    try:
        with sigterm_raises():
            pipe.run(on_tick=tick)
    except _SigTerm:
        raise TerminatedError(f"terminated (SIGTERM) after {pipe.sink.delivered} frames; "
                              f"{_closed(out, masks)}") from None
    except KeyboardInterrupt:
        log.warning("interrupted after %d frames; %s", pipe.sink.delivered, _closed(out, masks))
        raise
    finally:
        tick()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    stats = collect_stats(pipe, wall, backend, skipped=source.skipped)
    frames_in = pipe["decode"].count
    if pipe.drops or source.skipped:                 # never silent: say where frames went
        where = ", ".join(f"{q.drops} at {q.name} ({q.policy})" for q in pipe.queues if q.drops)
        log.warning("dropped %d frames: %s%s", pipe.drops + source.skipped, where or "none by the queues",
                    f"; {source.skipped} undecodable" if source.skipped else "")
    if stats["frames"] + pipe.drops != frames_in:     # every frame accounted for, or say so
        log.warning("%d frames decoded but %d written and %d dropped", frames_in, stats["frames"], pipe.drops)
    if stats_path is not None:
        Path(stats_path).parent.mkdir(parents=True, exist_ok=True)
        Path(stats_path).write_text(json.dumps(stats, indent=2))
    if source.error is not None and frames_in == 0:
        hint = " (an MP4 over HTTP needs a server with range requests, or one written with " \
               "-movflags +faststart)" if info.name.startswith("http") else ""
        raise MediaError(f"could not read a frame from {info.name}: {source.error}{hint}")
    if source.error is not None:
        raise PartialInputError(f"{info.name} ended early after {frames_in} frames ({source.error}); "
                                f"{_closed(out, masks)}")
    return stats


def _closed(out, masks) -> str:
    where = " and ".join(str(p) for p in (out, masks) if p is not None)
    return f"what was processed is in {where}" if where else "nothing was written"


def _percentiles(values_s: list[float], qs) -> list[float]:
    if not values_s:
        return [0.0 for _ in qs]
    return [round(float(v) * 1000.0, 3) for v in np.percentile(np.asarray(values_s), qs)]


def collect_stats(pipe: Pipeline, wall_s: float, backend, skipped: int = 0) -> dict:
    frames = pipe.sink.delivered
    stages = {}
    for stage in pipe.stages:
        p50, p95 = _percentiles(stage.call_s, (50, 95))
        stages[stage.name] = {"busy_s": round(stage.busy_s, 4), "p50_ms": p50, "p95_ms": p95}
    p50, p95, p99 = _percentiles(pipe.sink.latency_s, (50, 95, 99))
    return {
        "frames": int(frames),
        "dropped": int(pipe.drops + skipped),
        "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
        "wall_s": round(wall_s, 4),
        "backend": str(backend.name),
        "device": str(backend.device),
        "stages": stages,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
    }


def summary(stats: dict, out=None) -> str:
    slowest = max(stats["stages"].items(), key=lambda kv: kv[1]["busy_s"])[0] if stats["stages"] else "-"
    where = f" -> {out}" if out else ""
    return (f"{stats['frames']} frames in {stats['wall_s']:.1f} s ({stats['fps']:.1f} fps) on "
            f"{stats['backend']} ({stats['device']}), dropped {stats['dropped']}, latency p50 "
            f"{stats['latency_ms']['p50']:.0f} ms / p95 {stats['latency_ms']['p95']:.0f} ms, "
            f"busiest stage {slowest}{where}")
