"""Long runs: per-frame statistics stay bounded in memory; the soak benchmark (benchmarks/soak.py) runs.

The soak itself (>= 10 minutes of video) is a benchmark, not a test; a one-minute version runs with
the slow tests (.ci/run).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from faultmedia import ROOT, StubBackend, write_video
from pipeline.run import run
from pipeline.stage import STATS_WINDOW, Samples


def test_timing_samples_keep_only_the_most_recent_window():
    s = Samples(100)
    for i in range(1000):
        s.append(float(i))
    assert len(s) == 100 and s.count == 1000
    assert np.array_equal(np.asarray(s), np.arange(900, 1000, dtype=float))        # oldest first
    s[-1] -= 0.5
    assert s[-1] == 998.5 and s[0] == 900.0 and np.percentile(np.asarray(s), 0) == 900.0
    assert len(Samples(3)) == 0 and np.asarray(Samples(3)).size == 0


def test_a_run_keeps_its_statistics_within_the_window(tmp_path, settings, monkeypatch):
    import pipeline.stage

    monkeypatch.setattr(pipeline.stage, "STATS_WINDOW", 8)
    monkeypatch.setattr(pipeline.stage.Samples.__init__, "__defaults__", (8,))
    pipes = []
    stats = run(write_video(tmp_path / "clip.mp4", 30), tmp_path / "seg.mp4", settings, backend=StubBackend(),
                monitor=pipes.append)
    assert stats["frames"] == 30 and stats["latency_ms"]["p50"] > 0
    stages = pipes[-1].stages
    assert all(len(s.call_s) <= 8 and len(s.latency_s) <= 8 for s in stages)
    assert pipes[-1].sink.latency_s.count == 30 and pipes[-1]["decode"].call_s.count >= 30
    assert pipes[-1].sink.call_s.count == 30          # one per frame: the flush at the end is not a frame
    assert STATS_WINDOW >= 10_000                                          # the real window: minutes of frames


@pytest.mark.slow
def test_a_short_soak_passes(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "benchmarks/soak.py", "--minutes", "1", "--live-seconds", "10",
                           "--warmup", "10", "--max-growth-mb", "30", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    file, live = json.loads(out.read_text())
    assert file["frames_written"] == file["frames_offered"] >= 1200 and file["dropped"] == 0
    assert live["dropped"] > 0 and all(live["pass"].values())
