"""Soak test: a long run, with resident memory (RSS) and queue depths sampled every second.

    python benchmarks/soak.py                                  # sample.mp4 looped to >= 10 min of video
    python benchmarks/soak.py --minutes 10 --live-seconds 60 --log soak.csv --json soak.json

File mode loops the clip (timestamps keep rising, so the output is one long video) through
``pipeline.run.run`` with the configured backend: every queue blocks, so no queue may grow past its
capacity and nothing may be dropped. Live mode (``--live-seconds``) offers the same clip as a camera
at ``--live-fps`` (faster than the model on purpose): the queue after the source drops the oldest
frame, and every frame offered is either written or counted as dropped (but for the few still in the
queues when the run is stopped).

Pass: RSS flat after warm-up (growth from the warm-up sample to the end within ``--max-growth-mb``),
no queue deeper than its capacity (+1: the end-of-stream marker is never held back), every frame
written (file), and (live) frames written + dropped = frames offered. The CSV log (``--log``) has
every sample, to tell a leak (RSS rising with frames) from a step (the machine got busier). Not part of
the test suite (minutes of CPU); the numbers go to BENCHMARKS.md. Check ``uptime`` first: the load
average is printed, and on a shared machine the frame rate (not the memory) depends on it.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.run import run  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402
from pipeline.sources import open_source  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Looped:
    """A video played ``loops`` times as one source: indices and pts keep rising across the seams.
    With ``pace_fps`` it is a live source (a camera at that rate): frames are offered on time."""

    def __init__(self, path, decode_settings, loops: int, pace_fps: float | None = None):
        self.path, self.decode, self.loops, self.pace_fps = path, decode_settings, loops, pace_fps
        first = open_source(path, decode_settings)
        self.per_loop = first.info.frames
        first.close()
        self.info = replace(first.info, frames=None if pace_fps else self.per_loop * loops, live=bool(pace_fps),
                            name=f"{first.info.name} x{loops}",
                            fps=Fraction(pace_fps).limit_denominator(1000) if pace_fps else first.info.fps)
        self.skipped, self.error, self.offered = 0, None, 0
        self._current = None

    def frames(self):
        offset, index, t0 = 0, 0, time.perf_counter()
        step = max(1, round(1 / (self.info.fps * self.info.time_base)))
        for _ in range(self.loops):
            self._current = src = open_source(self.path, self.decode)
            last = 0
            for _, pts, tb, image in src.frames():
                if self.pace_fps:
                    due = t0 + index / self.pace_fps
                    if (wait := due - time.perf_counter()) > 0:
                        time.sleep(wait)
                    pts = index * step
                else:
                    pts += offset
                last = pts
                self.offered += 1
                yield index, pts, tb, image
                index += 1
            self.skipped += src.skipped
            src.close()
            self._current = None
            offset = last + step

    def close(self):
        if self._current is not None:
            self._current.close()


def soak(video, settings, *, loops: int, pace_fps: float | None, seconds: float | None, log_rows: list,
         label: str, warmup_s: float) -> dict:
    source = Looped(video, settings.decode, loops, pace_fps)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    state = {"next": t0, "depth": {}, "capacity": {}}

    def monitor(pipe):
        now = time.perf_counter()
        for q in pipe.queues:                       # depth every tick, the max of it per queue
            state["depth"][q.name] = max(state["depth"].get(q.name, 0), len(q))
            state["capacity"][q.name] = q.capacity
        if seconds is not None and now - t0 >= seconds:
            pipe.stop()
        if now >= state["next"]:
            state["next"] += 1.0
            log_rows.append({"mode": label, "t_s": round(now - t0, 1), "frames": pipe.sink.delivered,
                             "rss_mb": round(rss_mb(), 1), "drops": pipe.drops,
                             **{f"q:{q.name}": len(q) for q in pipe.queues}})

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="segpipe-soak-") as tmp:
        try:
            stats = run(source, Path(tmp) / "soak.mkv", settings, monitor=monitor)
        except KeyboardInterrupt:
            raise
    wall = time.perf_counter() - t0
    rows = [r for r in log_rows if r["mode"] == label]
    warm = next((r for r in rows if r["t_s"] >= warmup_s), rows[0])
    after = [r for r in rows if r["t_s"] >= warm["t_s"]]
    # slope of RSS after warm-up (least squares), MB per minute
    n = len(after)
    if n >= 2:
        mt = sum(r["t_s"] for r in after) / n
        mr = sum(r["rss_mb"] for r in after) / n
        var = sum((r["t_s"] - mt) ** 2 for r in after)
        slope = 60 * sum((r["t_s"] - mt) * (r["rss_mb"] - mr) for r in after) / var if var else 0.0
    else:
        slope = 0.0
    result = {
        "mode": label,
        "video_s": round(source.offered / float(source.info.fps), 1),
        "frames_offered": source.offered,
        "frames_written": stats["frames"],
        "dropped": stats["dropped"],
        "wall_s": round(wall, 1),
        "fps": stats["fps"],
        "rss_mb": {"before": round(rss0, 1), "first_sample": rows[0]["rss_mb"] if rows else None,
                   "after_warmup": warm["rss_mb"], "warmup_at_s": warm["t_s"], "end": rows[-1]["rss_mb"],
                   "max": max(r["rss_mb"] for r in rows), "growth_after_warmup": round(rows[-1]["rss_mb"]
                                                                                   - warm["rss_mb"], 1),
                   "slope_mb_per_min": round(slope, 2)},
        "queue_max_depth": state["depth"],
        "queue_capacity": state["capacity"],
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(ROOT / "assets" / "sample.mp4"))
    p.add_argument("--minutes", type=float, default=10.0, help="video minutes to process in file mode")
    p.add_argument("--live-seconds", type=float, default=0.0, help="then a live run this long (0: none)")
    p.add_argument("--live-fps", type=float, default=120.0, help="the live source's rate (above the model's)")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of warm-up before the RSS baseline")
    p.add_argument("--max-growth-mb", type=float, default=8.0)
    p.add_argument("--config", help="pipeline settings (default: configs/pipeline.yaml)")
    p.add_argument("--log", help="write every sample as CSV")
    p.add_argument("--json", help="write the results as JSON")
    args = p.parse_args(argv)

    settings = load_settings(args.config)
    probe = open_source(args.video, settings.decode)
    per_loop_s = probe.info.frames / float(probe.info.fps)
    probe.close()
    loops = max(1, int(-(-args.minutes * 60 // per_loop_s)))
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows: list[dict] = []
    results = [soak(args.video, settings, loops=loops, pace_fps=None, seconds=None, log_rows=rows,
                    label="file", warmup_s=args.warmup)]
    if args.live_seconds > 0:
        results.append(soak(args.video, settings, loops=10**6, pace_fps=args.live_fps, seconds=args.live_seconds,
                            log_rows=rows, label="live", warmup_s=min(args.warmup, args.live_seconds / 3)))
    ok = True
    for r in results:
        # a full queue still takes the end-of-stream marker (EOS is never held back): capacity + 1
        bounded = all(r["queue_max_depth"][q] <= r["queue_capacity"][q] + 1 for q in r["queue_max_depth"])
        in_flight = sum(r["queue_capacity"].values()) + 8     # in the queues and stages when stopped
        accounted = 0 <= r["frames_offered"] - r["frames_written"] - r["dropped"] <= in_flight \
            if r["mode"] == "live" else r["dropped"] == 0 and r["frames_written"] == r["frames_offered"]
        flat = r["rss_mb"]["growth_after_warmup"] <= args.max_growth_mb
        r["pass"] = {"rss_flat": flat, "queues_bounded": bounded, "frames_accounted": accounted}
        ok &= flat and bounded and accounted
        print(json.dumps(r, indent=2), flush=True)
    if args.log:
        keys = sorted({k for row in rows for k in row}, key=lambda k: (k.startswith("q:"), k))
        with open(args.log, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
