"""`segpipe live --show` in a real OpenCV (Qt) window on a virtual X screen (Xvfb), as on a desktop."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_GUI = any(line.split(":", 1)[1].strip().upper() != "NONE" for line in cv2.getBuildInformation().splitlines()
              if line.strip().startswith("GUI:"))
pytestmark = [pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="Xvfb is not installed (apt install xvfb)"),
              pytest.mark.skipif(not HAS_GUI, reason="this OpenCV has no GUI (opencv-python-headless)")]
SEGPIPE = f"{sys.executable} -m pipeline.cli"


def on_screen(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "bash", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_the_window_shows_every_frame_quietly(tmp_path):
    stats = tmp_path / "stats.json"
    done = on_screen(f"{SEGPIPE} live assets/sample.mp4 --show --frames 15 --stats {stats}")
    assert done.returncode == 0, done.stderr
    assert "window open; keys: q/Esc quit" in done.stderr
    assert "QFontDatabase" not in done.stderr and "Traceback" not in done.stderr  # no Qt noise, no crash
    report = json.loads(stats.read_text())
    assert report["frames"] == 15 and report["dropped"] == 0 and report["exit"] == "done"


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed (apt install xdotool)")
def test_q_in_the_window_ends_the_run_cleanly(tmp_path):
    stats, log = tmp_path / "stats.json", tmp_path / "err.log"
    script = (f"{SEGPIPE} live assets/sample.mp4 --show --realtime --loop --duration 60 --stats {stats} 2>{log} & pid=$!; "
              f"for i in $(seq 100); do grep -q 'window open' {log} && break; sleep 0.2; done; sleep 1; "
              f"xdotool key --window \"$(xdotool search --name 'segpipe live' | head -1)\" q; wait $pid")
    done = on_screen(script)
    err = log.read_text()
    assert done.returncode == 0, err + done.stderr
    report = json.loads(stats.read_text())
    assert report["frames"] > 0 and report["exit"] == "done" and report["live"]["exit"] == "key", report
