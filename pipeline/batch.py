"""Many inputs on one machine: ``run_batch(jobs, settings, workers=N)``, one output per input.

``expand_inputs`` turns what the user typed (paths, globs of videos, folders of videos, ``@list.txt`` or
``list.txt`` naming one path or URL per line) into inputs; ``plan_jobs`` names each one's output
(``--out-dir`` mirrors the inputs' folders below their common parent, so ``a/x.mp4`` and ``b/x.mp4``
do not collide; inputs in one folder land flat as ``DIR/x.mp4``).

Each worker is a process with its own engine, built on its first file and reused for every file it
takes, and its own thread budget (cores // workers for torch/onnxruntime, FFmpeg decode and encode),
so N pipelines share the cores instead of oversubscribing them; on GPUs, one worker per GPU. Files go
to workers as they free up. A failed file is retried once (unless the input itself is at fault:
missing, not a video, truncated), then reported; it never stops the others. A worker process that dies
(out of memory, killed) takes the whole process pool with it, and the files then running with it: those
are run again one at a time (on one worker), so only the file that kills its worker while alone is charged
for it. Every worker of a pool starts before its first file, so a death is seen at once.
A worker whose engine cannot be built stops the batch (every file would fail the same way).

The summary (``summarise``; ``--stats FILE`` writes it)::

    {"mode", "workers", "backend", "files", "done", "failed", "frames", "wall_s", "fps",   # aggregate fps
     "failures": [{"src", "error", "attempts"}],
     "results": [{"src", "out", "masks", "status", "attempts", "worker", "frames", "fps", "wall_s",
                  "error", "stats"}]}                                              # stats: run()'s
``pipeline.cluster`` runs the same ``Worker`` as Ray actors.
"""
from __future__ import annotations

import glob
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path

from engine import CPU_BACKENDS
from engine.loader import cpu_count
from pipeline.signals import SigTerm, sigterm_raises
from pipeline.stage import Stage
from train.data import IMAGE_EXTENSIONS
from train.errors import (
    InputNotFoundError,
    InvalidInputError,
    PartialInputError,
    SegpipeError,
    TerminatedError,
    plural,
)
from train.paths import writable_file, writable_folder, write_json

log = logging.getLogger("segpipe.batch")

STOP_TIMEOUT_S = 15.0       # for a stopped batch's workers to close their outputs

LIST_EXTS = {".txt", ".lst"}
# files a folder of videos may also hold (notes, subtitles, metadata): not inputs
NOT_VIDEOS = {".txt", ".md", ".json", ".yaml", ".yml", ".csv", ".log", ".srt", ".vtt", ".xml", ".html", ".pdf",
              ".zip", ".gz", ".tar"}
MAX_ATTEMPTS = 2                         # a failed file is retried once
NOT_RETRIED = (InputNotFoundError, InvalidInputError, PartialInputError)   # the input is at fault


# ------------------------------------------------------------------------------ inputs and outputs

@dataclass(frozen=True)
class Job:
    index: int                 # position in the batch (the summary keeps this order)
    src: str                   # path (absolute), URL, or image folder/glob
    out: str | None            # output video
    masks: str | None          # label PNG folder

    @property
    def name(self) -> str:
        return os.path.basename(self.src.rstrip("/")) or self.src


def is_list(spec: str) -> bool:
    """``@list.txt``, or a .txt/.lst file: one input per line."""
    return spec.startswith("@") or (Path(spec).suffix.lower() in LIST_EXTS and "://" not in spec)


def is_many(specs) -> bool:
    """Does what the user typed name several inputs (or possibly several: a list file)?"""
    specs = list(specs or [])
    return len(specs) > 1 or any(is_list(s) for s in specs) or any(_is_video_glob(s) for s in specs)


def _is_video_glob(spec: str) -> bool:
    if "://" in spec or not any(c in spec for c in "*?[") or Path(spec).exists():
        return False
    return any(Path(p).suffix.lower() not in IMAGE_EXTENSIONS for p in glob.glob(spec, recursive=True)
               if Path(p).is_file())


def expand_inputs(specs) -> list[str]:
    """Paths, URLs, globs, folders and list files -> one entry per input (order kept, duplicates
    dropped). A glob or folder of images stays one input (an image sequence); of videos, one per video.
    In a list file, blank lines and ``#`` comments are skipped and relative paths are relative to the
    list's folder."""
    found: list[str] = []
    for spec in specs:
        spec = str(spec)
        if is_list(spec):
            path = Path(spec.removeprefix("@"))
            if not path.is_file():
                raise InputNotFoundError(f"list {path} does not exist: write one video path or URL per line")
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            if not entries:
                raise InvalidInputError(f"list {path} names no inputs: write one video path or URL per line")
            for entry in entries:
                if "://" not in entry and not Path(entry).is_absolute():
                    entry = str(path.parent / entry)
                found.extend(_expand_one(entry))
        else:
            found.extend(_expand_one(spec))
    unique = list(dict.fromkeys(found))
    if len(unique) < len(found):
        repeated = [src for src, n in Counter(found).items() if n > 1]
        log.warning("%s named more than once: segmented once", plural(len(repeated), "input") if len(repeated) > 3
                    else ", ".join(repeated))
    return unique


def _expand_one(spec: str) -> list[str]:
    from pipeline.sources import natural_sorted

    if "://" in spec or spec.isdigit() or spec.startswith("/dev/video"):
        return [spec]
    path = Path(spec)
    if any(c in spec for c in "*?[") and not path.exists():
        files = [p for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        if not files:
            raise InputNotFoundError(f"nothing matches {spec!r}: check the pattern (quote it so the shell "
                                     f"does not expand it), e.g. 'drives/*.mp4'")
        videos = [p for p in files if Path(p).suffix.lower() not in IMAGE_EXTENSIONS]
        return [_abs(p) for p in natural_sorted(videos)] if videos else [spec]
    if path.is_dir():
        entries = list(path.iterdir())
        children = [p for p in entries if p.is_file()]
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in children):
            return [_abs(path)]                                # a folder of frames: one input
        files = [p for p in children if not p.name.startswith(".")]
        others = [p.name for p in files if p.suffix.lower() in NOT_VIDEOS]
        folders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
        if others:
            names = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
            log.info("%s: %s left out, not videos (%s)", path, plural(len(others), "file"), names)
        if folders:
            log.info("%s: %s not searched (a glob reaches into them: '%s/**/*.mp4')", path,
                     plural(len(folders), "subfolder"), path)
        videos = natural_sorted(_abs(p) for p in files if p.suffix.lower() not in NOT_VIDEOS)
        if not videos:
            raise InvalidInputError(f"folder {path} holds no videos or images")
        return videos
    return [_abs(path) if path.exists() else spec]     # a missing file fails as that file


def _abs(path) -> str:
    """Absolute and normalised, but links kept (their names are the user's: outputs are named after them)."""
    return os.path.abspath(path)


def _output_name(src: str) -> str:
    """The input's base name without its extension (a glob of frames: its folder's name)."""
    if src == "-":
        return "stdin"
    if "://" in src:
        tail = src.split("://", 1)[1].split("?", 1)[0].rstrip("/")
        return Path(tail.rsplit("/", 1)[-1]).stem or tail.replace("/", "_").replace(":", "_")
    path = Path(src)
    if any(c in src for c in "*?[") and not path.exists():      # 'run1/*.jpg' -> run1
        parts = path.parts
        first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
        return Path(_abs(Path(*parts[:first]))).name if first else Path.cwd().name
    return path.name if path.is_dir() else path.stem


def plan_jobs(inputs: list[str], out_dir=None, masks_dir=None, ext: str = ".mp4") -> list[Job]:
    """One job per input: ``out_dir/REL/NAME.mp4`` (and ``masks_dir/REL/NAME/``), where REL is the
    input's folder relative to the inputs' common parent (empty when they share one folder)."""
    if not inputs:
        raise InvalidInputError("no inputs: pass video files, a glob ('drives/*.mp4'), a folder, or @list.txt")
    if out_dir is None and masks_dir is None:
        raise InvalidInputError("nothing to write: with several inputs pass --out-dir DIR (one video per "
                                "input, same base name) and/or --masks DIR")
    local = [Path(_abs(s)).parent for s in inputs if "://" not in s and Path(s).exists()]
    root = Path(os.path.commonpath(local)) if local else None
    jobs, seen = [], {}
    for i, src in enumerate(inputs):
        rel = Path(_output_name(src))
        if root is not None and "://" not in src and Path(src).exists():
            rel = Path(_abs(src)).parent.relative_to(root) / rel
        if str(rel) in seen:
            raise InvalidInputError(f"{seen[str(rel)]} and {src} would both write {rel}{ext}: rename one, "
                                    f"or run them as separate batches")
        seen[str(rel)] = src
        out = str(Path(_abs(out_dir)) / rel) + ext if out_dir is not None else None
        masks = str(Path(_abs(masks_dir)) / rel) if masks_dir is not None else None
        jobs.append(Job(i, src, out, masks))
    return jobs


# ------------------------------------------------------------------------------ one worker

def uses_gpu_backend(settings) -> bool:
    """The backend can run on a GPU (this machine may have none: Ray actors' nodes may)."""
    s = settings.infer
    return s.backend not in CPU_BACKENDS and str(s.device or "cuda").startswith("cuda")


def uses_gpu(settings) -> bool:
    """The backend will run on this machine's GPU."""
    import torch

    return uses_gpu_backend(settings) and torch.cuda.is_available()


def default_workers(settings) -> int:
    """One per GPU; on the CPU one single-threaded pipeline per core. Measured on 2 cores (4 x 300
    frames of carla_drive.mp4, onnxruntime): 1 worker x 2 threads 51 fps, 2 x 1 thread 56 fps (98% of
    the 2 cores, and of 2000 / 35 CPU-ms per frame), 4 x 1 thread 51 fps (oversubscribed: +10% CPU a
    frame). benchmarks/scale.py measures it."""
    if uses_gpu(settings):
        import torch
        return torch.cuda.device_count()
    return cpu_count()


def worker_settings(settings, threads: int, device: str | None = None):
    """A worker's share of the machine: ``threads`` for torch/onnxruntime and for FFmpeg's decoder and
    encoder (where the config leaves them to their defaults), and its GPU."""
    s = settings
    threads = max(1, int(threads))
    return replace(s,
                   infer=replace(s.infer, torch_threads=s.infer.torch_threads or threads,
                                 device=device if device is not None else s.infer.device),
                   decode=replace(s.decode, threads=s.decode.threads or threads),
                   encode=replace(s.encode, threads=s.encode.threads or threads))


class FrameCounter(Stage):
    """A pass-through sink that counts frames as they leave the pipeline (for live progress)."""
    name = "progress"

    def __init__(self, tick):
        super().__init__()
        self.tick = tick

    def process(self, frame):
        self.tick(1)
        return frame


class Worker:
    """One pipeline slot: a thread budget and its engines, one per frame orientation (portrait inputs run
    the model turned, as in a single ``run``), each built on the first file that needs it and reused.
    Local workers live one per process; ``pipeline.cluster`` makes this class a Ray actor."""

    def __init__(self, settings, name: str = "worker", tick=None):
        self.settings, self.name = settings, name
        self.backends: dict[int, object] = {}       # by orientation: -1 landscape, 0 square (or --size), 1 portrait
        self._build_error: Exception | None = None
        self.frames_done = 0                 # frames delivered by this worker, live (for progress)
        self._tick = tick

    def frames(self) -> int:
        return self.frames_done

    def _count(self, n: int) -> None:
        self.frames_done += n
        if self._tick is not None:
            self._tick(n)

    def process(self, job: Job, attempt: int = 1) -> dict:
        """Segment one input; never raises: the result says done or failed, and why."""
        from pipeline.run import run

        record = failed_record(job, attempt, None, self.name)
        before = self.frames_done
        t0 = time.perf_counter()
        try:
            stats = run(job.src, job.out, self.settings, masks=job.masks, backend_for=self._backend_for,
                        sinks=[FrameCounter(self._count)])
        except Exception as e:
            ended = getattr(e, "stats", None) if isinstance(e, PartialInputError) else None
            if ended is None:                             # a failed attempt's frames do not count; an input
                self._count(before - self.frames_done)    # that ended early keeps the frames written
            if (build := self._build_error) is not None:  # the engine cannot be built: every file would fail alike
                record.update(error=f"cannot build the engine: {_reason(build)}", fatal=True,
                              exception=build if _picklable(build) else None,
                              exit_code=getattr(build, "exit_code", 1))
                return record
            record.update(error=_reason(e), retry=not isinstance(e, NOT_RETRIED),
                          wall_s=round(time.perf_counter() - t0, 3))
            if ended is not None:
                ended["stages"].pop(FrameCounter.name, None)
                record.update(frames=ended["frames"], fps=ended["fps"], stats=ended)
            return record
        stats["stages"].pop(FrameCounter.name, None)
        record.update(status="done", frames=stats["frames"], fps=stats["fps"], wall_s=stats["wall_s"],
                      stats=stats, retry=False)
        return record

    def _backend_for(self, frame_size: tuple[int, int]):
        from pipeline.run import load_backend

        h, w = frame_size
        key = 0 if self.settings.infer.size else (h > w) - (h < w)     # --size: one engine for all
        if key not in self.backends:
            try:
                self.backends[key] = load_backend(self.settings, frame_size)
            except Exception as e:
                self._build_error = e
                raise
        return self.backends[key]


def _picklable(e: BaseException) -> bool:
    import pickle
    try:
        pickle.loads(pickle.dumps(e))
        return True
    except Exception:
        return False


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, SegpipeError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def failed_record(job: Job, attempt: int, error: str | None, worker: str = "?") -> dict:
    """A file's result, failed (``retry``: whether another attempt could do better)."""
    return {"src": job.src, "out": job.out, "masks": job.masks, "status": "failed", "attempts": attempt,
            "worker": worker, "frames": 0, "fps": 0.0, "wall_s": 0.0, "error": error, "stats": None,
            "retry": True}


# ------------------------------------------------------------------------------ the batch's books

class Tally:
    """What is left, done and failed; the one retry; the progress bar (files, frames in the postfix)."""

    def __init__(self, jobs: list[Job], *, progress: bool, mode: str, workers: int):
        self.jobs, self.mode, self.workers = jobs, mode, workers
        self.pending: deque[tuple[Job, int]] = deque((job, 1) for job in jobs)
        self.records: dict[int, dict] = {}
        self.t0 = time.perf_counter()
        self.frames_live = 0
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=len(jobs), unit="file", desc=f"segment ({plural(workers, mode + ' worker')})",
                            dynamic_ncols=True, file=sys.stderr, disable=None)   # None: off without a terminal

    def next(self) -> tuple[Job, int] | None:
        return self.pending.popleft() if self.pending else None

    def finish(self, job: Job, attempt: int, record: dict) -> None:
        """Book a result; a retryable failure goes to the back of the queue once."""
        if record.get("fatal"):
            self.close()
            error = record.get("exception")
            if not isinstance(error, SegpipeError):
                error = SegpipeError(record["error"])
                error.exit_code = record.get("exit_code", 1)
            raise error
        retry = record.pop("retry", False)
        record.pop("exception", None)
        if record["status"] == "failed" and retry and attempt < MAX_ATTEMPTS:
            log.warning("%s failed (attempt %d of %d, %s): %s; retrying", job.name, attempt, MAX_ATTEMPTS,
                        record["worker"], record["error"])
            self.pending.append((job, attempt + 1))
            return
        if record["status"] == "failed":
            log.warning("%s failed: %s", job.name, record["error"])
        self.records[job.index] = record
        if self.bar is not None:
            self.bar.update(1)
            self.live(self.frames_live)
            if self.bar.disable and record["status"] == "done":     # no terminal: a log line per file
                log.info("%d/%d done: %s (%d frames, %.1f fps)", len(self.records), len(self.jobs), job.name,
                         record["frames"], record["fps"])

    def live(self, frames: int) -> None:
        """Frames delivered so far across all workers (those of files still running included)."""
        self.frames_live = max(frames, sum(r["frames"] for r in self.records.values()))
        if self.bar is not None:
            wall = time.perf_counter() - self.t0
            failed = sum(r["status"] == "failed" for r in self.records.values())
            post = {"frames": self.frames_live, "fps": f"{self.frames_live / wall:.1f}" if wall else "0"}
            if failed:
                post["failed"] = failed
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self) -> dict:
        self.close()
        return summarise([self.records[j.index] for j in self.jobs if j.index in self.records],
                         time.perf_counter() - self.t0, mode=self.mode, workers=self.workers)


def summarise(records: list[dict], wall_s: float, *, mode: str, workers: int) -> dict:
    done = [r for r in records if r["status"] == "done"]
    frames = sum(r["frames"] for r in records)        # also those of an input that ended early (in its output)
    backends = sorted({f"{r['stats']['backend']} ({r['stats']['device']})" for r in records if r["stats"]})
    return {"mode": mode, "workers": workers, "backend": ", ".join(backends) or None,
            "files": len(records), "done": len(done),
            "failed": len(records) - len(done), "frames": frames, "wall_s": round(wall_s, 3),
            "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
            "failures": [{"src": r["src"], "error": r["error"], "attempts": r["attempts"]}
                         for r in records if r["status"] != "done"],
            "results": records}


def format_summary(summary: dict) -> str:
    lines = [f"{plural(summary['files'], 'file')}: {summary['done']} done, {summary['failed']} failed; "
             f"{plural(summary['frames'], 'frame')} in {summary['wall_s']:.1f} s ({summary['fps']:.1f} fps "
             f"aggregate) on {plural(summary['workers'], summary['mode'] + ' worker')}"
             + (f", {summary['backend']}" if summary.get("backend") else "")]
    for f in summary["failures"]:
        lines.append(f"  FAILED {f['src']}: {f['error']} ({plural(f['attempts'], 'attempt')})")
    return "\n".join(lines)


def write_summary(summary: dict, path) -> None:
    write_json(path, summary, "the summary", log)


# ------------------------------------------------------------------------------ local processes

_worker: Worker | None = None          # this process's worker (in a pool process)


def _init_process(settings, threads: int, gpus: int, slot, counter, log_level: int) -> None:
    global _worker
    logging.basicConfig(level=log_level if log_level <= logging.DEBUG else max(log_level, logging.WARNING),
                        format="%(levelname).1s %(name)s: %(message)s")
    with slot.get_lock():
        index = slot.value
        slot.value += 1
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    device = f"cuda:{index % gpus}" if gpus else None

    def tick(n):
        with counter.get_lock():
            counter.value += n

    _worker = Worker(worker_settings(settings, threads, device), name=f"worker-{index}", tick=tick)
    # SIGTERM while idle ends the worker through Python, which lets go of the task queue's lock (a plain
    # SIGTERM would die holding it, and the other workers wait on it); within a file ``run`` handles it
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _process(job: Job, attempt: int) -> dict:
    return _worker.process(job, attempt)


def run_batch(jobs: list[Job], settings, workers: int | None = None, *, progress: bool = False) -> dict:
    """Segment ``jobs`` with ``workers`` processes on this machine; return the summary."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    gpus = 0
    if uses_gpu(settings) and settings.infer.device in (None, "cuda"):
        import torch
        gpus = torch.cuda.device_count()
    workers = int(workers or default_workers(settings))
    if workers < 1:
        raise InvalidInputError(f"--workers {workers} must be >= 1")
    workers = min(workers, len(jobs))
    threads = max(1, cpu_count() // workers)
    ctx = mp.get_context("spawn")        # fresh interpreters: no forked torch/FFmpeg thread state
    counter, slot = ctx.Value("q", 0), ctx.Value("i", 0)

    def pool(size: int):
        return start_pool(size, ctx, _init_process, (settings, threads, gpus, slot, counter,
                                                      logging.getLogger().getEffectiveLevel()))

    log.info("%s on %s (%s each%s)", plural(len(jobs), "file"), plural(workers, "worker"), plural(threads, "thread"),
             f", {gpus} GPUs" if gpus else "")
    tally = Tally(jobs, progress=progress, mode="local", workers=workers)
    executor, size = None, workers
    inflight: dict = {}
    alone: deque[tuple[Job, int]] = deque()   # running when a worker died: rerun one at a time, to tell which
    try:
        with sigterm_raises():
            while tally.busy or inflight or alone:
                # a pool at the start, after one died, and when those rerun one at a time are done: one at a
                # time takes one worker (not N, after running out of memory)
                if not inflight and (executor is None or size < workers and not alone):
                    if executor is not None:
                        executor.shutdown(wait=True)
                    size = 1 if alone else workers
                    executor = pool(size)
                if alone:
                    if not inflight:
                        job, attempt = alone.popleft()
                        inflight[executor.submit(_process, job, attempt)] = (job, attempt)
                else:
                    while tally.busy and len(inflight) < size:
                        job, attempt = tally.next()
                        inflight[executor.submit(_process, job, attempt)] = (job, attempt)
                done, _ = wait(inflight, timeout=0.5, return_when=FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    done = wait(inflight).done     # the whole pool is gone: every file on it ends now
                broken = []
                for future in done:
                    job, attempt = inflight.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken.append((job, attempt))
                    else:
                        tally.finish(job, attempt, future.result())
                if len(broken) == 1:       # it ran alone, so it was the one (or its process was killed)
                    job, attempt = broken[0]
                    tally.finish(job, attempt, failed_record(
                        job, attempt, "its worker process died (killed, or out of memory?)"))
                elif broken:               # not charged: all but one of them are innocent
                    log.warning("a worker process died with %d files running (killed, or out of memory?): "
                                "running them again one at a time, to tell which one it was", len(broken))
                    alone.extend(broken)
                if broken:
                    executor.shutdown(wait=True)
                    executor = None
                tally.live(counter.value)
    except BaseException as e:
        if executor is not None:
            _stop(executor)
        tally.close()
        if isinstance(e, SigTerm):
            raise TerminatedError(f"terminated (SIGTERM) with {len(tally.records)} of {len(jobs)} files "
                                  f"finished; the outputs of the files running were closed") from None
        raise
    if executor is not None:
        executor.shutdown(wait=True)
    return tally.summary()


def start_pool(workers: int, ctx, initializer, initargs):
    """A process pool with all its ``workers`` started. CPython starts them one per submit, and its manager
    thread can miss the death of one started after it last looked (CPython 3.11: seen only once another
    file ended, so a killed worker's file was charged as if it had run alone); started before the first
    file, every one is watched from the start."""
    from concurrent.futures import ProcessPoolExecutor, wait

    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs)
    try:
        started = [executor.submit(os.getpid) for _ in range(workers)]
        wait(started)
        if errors := [f.exception() for f in started if f.exception() is not None]:
            raise SegpipeError(f"the worker processes could not start: {errors[0]}")
    except BaseException:
        _stop(executor)
        raise
    log.debug("%s started", plural(workers, "worker"))
    return executor


def _stop(executor) -> None:
    """Stop the workers: SIGTERM makes each close its output properly (``run`` handles it). One still there
    after STOP_TIMEOUT_S is killed: an idle worker that SIGTERM ended while it held the task queue's lock
    leaves the others waiting on that lock for ever."""
    from multiprocessing.connection import wait as ended

    processes = [p for p in getattr(executor, "_processes", {}).values() if p.is_alive()]
    for process in processes:
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)      # the workers that finish get their stop
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while processes and (left := deadline - time.monotonic()) > 0:
        done = ended([p.sentinel for p in processes], timeout=left)
        processes = [p for p in processes if p.sentinel not in done]
    for process in processes:
        log.warning("worker process %d did not stop within %g s: killed", process.pid, STOP_TIMEOUT_S)
        process.kill()
    executor.shutdown(wait=True)


# ------------------------------------------------------------------------------ the command

def run_many(specs, settings, *, out_dir=None, masks=None, stats=None, workers=None, ray=None,
             progress=True) -> int:
    """``segpipe run`` with several inputs: plan, run locally or on Ray (``ray``: an address, or ""
    for a local cluster), print the summary, write ``stats``; exit status 0 if every file was done."""
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers {workers} must be >= 1")
    if stats is not None:
        stats = writable_file(stats, "--stats", "batch.json")
    for folder, flag in ((out_dir, "--out-dir"), (masks, "--masks")):
        if folder is not None:
            writable_folder(folder, flag)
    jobs = plan_jobs(expand_inputs(specs), out_dir, masks)
    shared = {(Path(path).parent, flag) for job in jobs
              for path, flag in ((job.out, "--out-dir"), (job.masks, "--masks")) if path is not None}
    for folder, flag in sorted(shared):     # made here: a job that fails to start takes back only its own
        writable_folder(folder, flag)
    if stats is not None:
        from pipeline.run import check_report, settings_path
        check_report(stats, "--stats", None, *((f"the input {j.src}", j.src) for j in jobs),
                     *((f"the output {p}", p) for j in jobs if j.out for p in (j.out, settings_path(j.out))))
    if ray is not None:
        from pipeline.cluster import run_cluster
        summary = run_cluster(jobs, settings, address=ray or None, workers=workers, progress=progress)
    else:
        summary = run_batch(jobs, settings, workers, progress=progress)
    if stats is not None:
        write_summary(summary, stats)
    print(format_summary(summary))
    return 0 if summary["failed"] == 0 else 1
