"""`segpipe bench --video`: each stage alone, the whole pipeline, and a naive sequential loop, in one run.

Each stage alone runs the same Stage objects the pipeline uses, one call after another in this thread,
on the same frames (decode reads the first N; the others cycle through the first ``CACHE`` decoded
frames so memory stays small). The naive loop reads a frame, runs it through preprocess, inference at
batch 1, colourise and encode, then reads the next. Same model, backend and settings throughout.

    efficiency = pipeline fps / slowest stage alone     (1.0: the stages overlap perfectly)
    speedup    = pipeline fps / naive loop fps
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

from engine.sizes import format_size
from pipeline.decode import Decode
from pipeline.encode import Encode
from pipeline.graph import model_stages, output_size
from pipeline.queues import EOS
from pipeline.run import apply_threads, load_backend, run
from pipeline.settings import Settings, load_settings
from pipeline.sources import open_source
from train.errors import InvalidInputError, plural

log = logging.getLogger("segpipe.pipeline")
CACHE = 64          # decoded frames kept for the stage-alone measurements


def _stages(source, backend, s: Settings, out: Path, batch: int | None = None):
    info = source.info
    width, height = output_size(info.width, info.height, s.colourise.view)
    return (*model_stages(backend, s, batch=batch), Encode.from_settings(out, width, height, info, s.encode))


def _batches(cache, tensors, n: int, batch: int):
    """``n`` frames in batches, cycling through the cached ones (each with its model input)."""
    k = len(cache)
    for i in range(0, n, batch):
        yield [dataclasses.replace(cache[j % k], tensor=tensors[j % k]) for j in range(i, min(i + batch, n))]


def _sync(backend) -> None:
    if backend.device.type == "cuda":
        import torch
        torch.cuda.synchronize(backend.device)


def bench_video(video, settings: Settings | None = None, frames: int | None = None, backend=None) -> dict:
    settings = settings or load_settings()
    apply_threads(settings)
    probe = open_source(video, settings.decode)
    probe.close()
    backend = backend if backend is not None else load_backend(settings, (probe.info.height, probe.info.width))
    if probe.info.live and frames is None:
        raise InvalidInputError(f"{video} is live: pass --frames N to bench it")
    n = frames or probe.info.frames
    fps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as folder:
        tmp = Path(folder)
        # --- decode alone (keeps the first CACHE frames for the others) --------------------------
        decode = Decode(open_source(video, settings.decode), max_frames=n)
        cache = []
        decode.setup()
        t = time.perf_counter()
        count = 0
        while (frame := decode.process()) is not EOS:
            count += 1
            if len(cache) < CACHE:
                cache.append(frame)
        fps["decode"] = count / (time.perf_counter() - t)
        decode.teardown()
        if not count:
            raise InvalidInputError(f"{video} has no frames to bench")
        promised = min(filter(None, (n, probe.info.frames)), default=None)   # both unknown: a raw stream
        if promised is not None and count < promised:    # the run below reads only these, so it would not notice
            log.warning("%s gave %d of the %d frames asked for (cut short or damaged): measured on those %d",
                        video, count, promised, count)
        n = count
        pre, infer, colour, enc = _stages(probe, backend, settings, tmp / "encode.mp4")
        batch = infer.batch                 # the settings' batch, clamped to the backend's max_batch
        for stage in (pre, infer, colour, enc):
            stage.setup()
        work = [cache[i % len(cache)] for i in range(n)]

        # --- preprocess alone -----------------------------------------------------------------------
        t = time.perf_counter()
        for f in work:
            pre.process(f)
        _sync(backend)
        fps["preprocess"] = n / (time.perf_counter() - t)

        # --- infer alone (after a warm-up batch), at the pipeline's batch ----------------------------
        k = len(cache)
        tensors = [f.tensor for f in cache]
        infer.process(next(_batches(cache, tensors, n, batch)))
        _sync(backend)
        t = time.perf_counter()
        for chunk in _batches(cache, tensors, n, batch):
            infer.process(chunk)
        _sync(backend)
        fps["infer"] = n / (time.perf_counter() - t)
        labelled = []
        for i in range(0, k, batch):
            labelled += infer.process([dataclasses.replace(f, tensor=tensors[j]) for j, f in
                                       enumerate(cache[i:i + batch], i)])

        # --- colourise alone ------------------------------------------------------------------------
        coloured = list(labelled)
        t = time.perf_counter()
        for i in range(n):
            g = colour.process(dataclasses.replace(labelled[i % k]))
            if i < k:
                coloured[i] = g
        _sync(backend)
        fps["colourise"] = n / (time.perf_counter() - t)

        # --- encode alone: the coloured frames, with rising timestamps -------------------------------
        step = max(1, round(1 / (probe.info.fps * probe.info.time_base)))
        t = time.perf_counter()
        for i in range(n):
            enc.process(dataclasses.replace(coloured[i % k], pts=i * step))
        enc.finish()
        fps["encode"] = n / (time.perf_counter() - t)
        enc.teardown()
        del cache, work, tensors, labelled, coloured

        # --- the pipeline --------------------------------------------------------------------------
        s = settings.override(decode={"max_frames": n})
        stats = run(video, tmp / "pipeline.mp4", s, backend=backend)

        # --- the naive loop: one frame at a time through every stage -------------------------------
        naive_fps = _naive(video, backend, s, tmp / "naive.mp4", n)

    slowest = min(fps, key=fps.get)
    return {
        "video": str(video),
        "frames": n,
        "backend": backend.name,
        "device": str(backend.device),
        "precision": backend.precision,
        "input_size": format_size(backend.input_size),
        "batch": batch,
        "cpu_count": os.cpu_count(),
        "stages_fps": {k: round(v, 2) for k, v in fps.items()},
        "slowest_stage": slowest,
        "pipeline_fps": stats["fps"],
        "naive_fps": round(naive_fps, 2),
        "efficiency": round(stats["fps"] / fps[slowest], 3),
        "speedup": round(stats["fps"] / naive_fps, 3),
        "pipeline": stats,
        "settings": settings.to_dict(),
    }


def _naive(video, backend, settings: Settings, out: Path, n: int) -> float:
    decode = Decode(open_source(video, settings.decode), max_frames=n)
    pre, infer, colour, enc = _stages(decode.source, backend, settings, out, batch=1)
    stages = (decode, pre, infer, colour, enc)
    for stage in stages:
        stage.setup()
    try:
        t = time.perf_counter()
        count = 0
        while (frame := decode.process()) is not EOS:
            pre.process(frame)
            infer.process([frame])
            colour.process(frame)
            enc.process(frame)
            count += 1
        enc.finish()
        return count / (time.perf_counter() - t)
    finally:
        for stage in stages:
            stage.teardown()


def format_report(r: dict) -> str:
    lines = [f"{r['video']}: {plural(r['frames'], 'frame')}, {r['backend']} {r['precision']} on {r['device']}, "
             f"input {r['input_size']}, batch {r['batch']}",
             f"{'':<22}{'frames/s':>10}"]
    for name, v in r["stages_fps"].items():
        mark = "   <- slowest" if name == r["slowest_stage"] else ""
        lines.append(f"  {name + ' alone':<20}{v:>10.1f}{mark}")
    lines.append(f"  {'pipeline':<20}{r['pipeline_fps']:>10.1f}   efficiency {r['efficiency']:.2f} "
                 f"(vs {r['slowest_stage']} alone)")
    lines.append(f"  {'naive loop':<20}{r['naive_fps']:>10.1f}   speedup {r['speedup']:.2f}x")
    if r["efficiency"] > 1.1:             # a pipeline cannot beat its slowest stage: that one was disturbed
        lines.append("  warning: efficiency above 1 means the stage-alone runs were slowed by other work on "
                     "this machine; measure again when it is quiet")
    lat = r["pipeline"]["latency_ms"]
    lines.append(f"  pipeline latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms")
    return "\n".join(lines)
