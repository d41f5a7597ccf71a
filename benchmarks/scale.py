"""Aggregate throughput of 1, 2, 4 ... concurrent pipelines on this machine (``segpipe run`` with many
inputs, ``pipeline.batch.run_batch``), against one pipeline running the files one after another.

    python benchmarks/scale.py                                  # 4 copies of carla_drive.mp4; 1, 2, 4 workers
    python benchmarks/scale.py --video assets/sample.mp4 --copies 8 --workers 1,2 --json scale.json
    python benchmarks/scale.py --stages                         # CPU ms per frame of each stage, 1 thread
    python benchmarks/scale.py --null-model                     # one pipeline with a free model: the
                                                                # ceiling of decode/colour/encode per process

``--stages`` runs each pipeline stage alone on one thread (FFmpeg decode and encode, OpenCV and the
CPU model all at 1 thread) and reads the thread's CPU clock, so the costs hold on a busy machine: the
per-core budget a cluster plan needs. It also gives the bytes per frame in (the input) and out.

Each worker gets cores // workers threads for torch/onnxruntime, FFmpeg decode and encode (at least 1).
The copies are symbolic links (outputs are named after them). The wall time includes starting the
worker processes and building their engines. The load average before each run and the share of the
CPUs that other processes used during it (``cpu_others``, from /proc/stat minus our own rusage) are
printed: on a shared machine, wait for the load to fall below ~1 and distrust rows where others used
much.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.batch import cpu_count, plan_jobs, run_batch
from pipeline.settings import load_settings

DEFAULT_VIDEO = ROOT.parent / "shared" / "videos" / "carla_drive.mp4"


def load() -> float:
    return os.getloadavg()[0]


class CpuShare:
    """How busy the machine was during a run, and how much of that was not us: /proc/stat counts every
    process on the machine (other users' too), getrusage only ours (this process and reaped children)."""

    def __enter__(self):
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        cap = wall * cpu_count()
        busy, ours = self._busy() - self.busy0, self._ours() - self.ours0
        self.ours_s = ours
        self.result = {"cpu_busy": round(busy / cap, 2), "cpu_ours": round(ours / cap, 2),
                       "cpu_others": round(max(0.0, busy - ours) / cap, 2)}

    def per_frame(self, frames: int) -> dict:
        """Our CPU milliseconds per frame: what the work costs, whatever else ran beside it."""
        return {**self.result, "cpu_ms_per_frame": round(self.ours_s * 1000 / max(1, frames), 2)}

    @staticmethod
    def _busy() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]                       # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        import resource
        return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                       resource.getrusage(resource.RUSAGE_CHILDREN)))


def stage_costs(video: str, frames: int = 200, backend: str = "auto") -> dict:
    """CPU milliseconds per frame of each stage alone, everything at one thread; bytes per frame."""
    from pipeline.decode import Decode
    from pipeline.encode import Encode
    from pipeline.graph import model_stages
    from pipeline.queues import EOS
    from pipeline.run import apply_threads, load_backend
    from pipeline.sources import open_source

    s = load_settings(infer={"backend": backend, "torch_threads": 1}, decode={"threads": 1},
                      encode={"threads": 1})
    apply_threads(s)
    model = load_backend(s)
    decode = Decode(open_source(video, s.decode), max_frames=frames)
    info = decode.source.info
    ms: dict[str, float] = {}

    def timed(name, fn, items):
        t = time.thread_time()
        out = [fn(item) for item in items]
        ms[name] = round((time.thread_time() - t) * 1000 / frames, 3)
        return out

    decode.setup()
    t = time.thread_time()
    got = []
    while (frame := decode.process()) is not EOS:
        got.append(frame)
    frames = len(got)
    ms["decode"] = round((time.thread_time() - t) * 1000 / frames, 3)
    decode.teardown()
    pre, infer, colour = model_stages(model, s)
    timed("preprocess", pre.process, got)
    import dataclasses
    infer.process([dataclasses.replace(f) for f in got[:infer.batch]])  # warm-up (on copies)
    timed("infer", infer.process, [got[i:i + infer.batch] for i in range(0, frames, infer.batch)])
    colour.setup()
    timed("colourise", colour.process, got)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        encode = Encode.from_settings(out, info.width, info.height, info, s.encode, threads=1)
        encode.setup()
        t = time.thread_time()
        for frame in got:
            encode.process(frame)
        encode.finish()
        encode.teardown()
        ms["encode"] = round((time.thread_time() - t) * 1000 / frames, 3)
        bytes_out = out.stat().st_size / frames
    import av
    with av.open(video) as c:
        bytes_in = Path(video).stat().st_size / max(1, c.streams.video[0].frames or frames)
    return {"video": video, "size": f"{info.width}x{info.height}", "fps": float(info.fps), "frames": frames,
            "backend": f"{model.name} at {model.input_size[0]}x{model.input_size[1]}, batch {infer.batch}",
            "cpu_ms_per_frame": ms, "bytes_per_frame": {"in": round(bytes_in), "out": round(bytes_out)}}


def null_backend(settings):
    """The real backend's interface and sizes with a model that costs ~nothing: what a pipeline does
    when inference is free (a stand-in for a fast GPU)."""
    from engine.backend import Backend
    from pipeline.run import load_backend

    real = load_backend(settings)

    class Null(Backend):
        name = "null"

        def _run(self, frames):
            return frames[:, 0] >> 5                  # cheap, and varied labels for the colouriser

    return Null(real.info, real.device, "fp32", real.max_batch)


def null_model(inputs, out_dir, settings) -> dict:
    from pipeline.run import apply_threads, run

    apply_threads(settings)
    backend = null_backend(settings)
    jobs = plan_jobs(inputs, out_dir)
    t0 = time.perf_counter()
    frames = sum(run(j.src, j.out, settings, backend=backend)["frames"] for j in jobs)
    wall = time.perf_counter() - t0
    return {"workers": "1 (in-process, null model)", "threads": "defaults", "files": len(jobs),
            "frames": frames, "wall_s": round(wall, 2), "fps": round(frames / wall, 1)}


def sequential(jobs, settings) -> dict:
    """One pipeline in this process, default thread settings, engine built once: the files in turn."""
    from pipeline.run import apply_threads, load_backend, run

    apply_threads(settings)
    t0 = time.perf_counter()
    backend = load_backend(settings)
    frames = sum(run(j.src, j.out, settings, backend=backend)["frames"] for j in jobs)
    wall = time.perf_counter() - t0
    return {"workers": "1 (in-process, sequential)", "threads": "defaults", "files": len(jobs),
            "frames": frames, "wall_s": round(wall, 2), "fps": round(frames / wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--frames-per-file", type=int, help="stop each file after N frames (shorter rounds)")
    ap.add_argument("--no-sequential", action="store_true", help="skip the one-pipeline baseline")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all the configurations (interleaved, so "
                                                          "background load hits them alike)")
    ap.add_argument("--null-model", action="store_true", help="one pipeline with a free model, instead")
    ap.add_argument("--stages", action="store_true", help="CPU ms per frame of each stage at 1 thread, instead")
    ap.add_argument("--frames", type=int, default=200, help="--stages: frames to measure")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.stages:
        costs = stage_costs(args.video, args.frames, args.backend)
        print(json.dumps(costs, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(costs, indent=2))
        return 0

    settings = load_settings(infer={"backend": args.backend}, decode={"max_frames": args.frames_per_file})
    rows = []
    with tempfile.TemporaryDirectory(prefix="segpipe-scale-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        inputs = []
        for k in range(args.copies):
            link = tmp / "in" / f"copy{k}{Path(args.video).suffix}"
            link.symlink_to(Path(args.video).resolve())
            inputs.append(str(link))
        print(f"{args.copies} x {args.video} on {cpu_count()} cores", flush=True)
        if args.null_model:
            before = load()
            with CpuShare() as cpu:
                row = null_model(inputs, tmp / "null", settings)
            rows.append({**row, "load_before": round(before, 2), **cpu.per_frame(row["frames"])})
            print(json.dumps(rows[-1]), flush=True)
            args.workers, args.no_sequential = "", True
        for _ in range(args.repeat):
            rows += configurations(args, inputs, tmp, settings)
    print(f"\n{'workers':<28} {'threads':>8} {'frames':>7} {'wall s':>7} {'fps':>7} {'load':>5} "
          f"{'cpu ours':>8} {'others':>7} {'ms/frame':>8}")
    for r in rows:
        print(f"{r['workers']!s:<28} {r['threads']!s:>8} {r['frames']:>7} {r['wall_s']:>7} {r['fps']:>7} "
              f"{r['load_before']:>5} {r['cpu_ours']:>8.0%} {r['cpu_others']:>7.0%} {r['cpu_ms_per_frame']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def configurations(args, inputs, tmp, settings) -> list[dict]:
    """One round: the one-pipeline baseline, then each worker count."""
    rows = []
    if not args.no_sequential:
        before = load()
        with CpuShare() as cpu:
            row = sequential(plan_jobs(inputs, tmp / "seq"), settings)
        rows.append({**row, "load_before": round(before, 2), **cpu.per_frame(row["frames"])})
        print(json.dumps(rows[-1]), flush=True)
    for n in (int(v) for v in args.workers.split(",") if v):
        before = load()
        with CpuShare() as cpu:
            summary = run_batch(plan_jobs(inputs, tmp / f"w{n}"), settings, workers=n)
        assert summary["failed"] == 0, summary["failures"]
        rows.append({"workers": n, "threads": max(1, cpu_count() // n), "files": summary["files"],
                     "frames": summary["frames"], "wall_s": summary["wall_s"], "fps": summary["fps"],
                     "per_file_fps": [r["fps"] for r in summary["results"]], "load_before": round(before, 2),
                     **cpu.per_frame(summary["frames"])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
