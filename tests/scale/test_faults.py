"""A worker killed mid-file (SIGKILL: no chance to clean up) costs that file one attempt; the batch
replaces the worker, retries the file, and every file is done. Slow: longer clips, so the kill lands
mid-file."""
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.batch import plan_jobs, run_batch
from pipeline.settings import load_settings

pytestmark = pytest.mark.slow


def kill_when(ready, find_pid, timeout_s=60.0):
    """In a thread: once ``ready()``, SIGKILL the process ``find_pid()`` names; returns a list that
    receives the killed pid."""
    killed = []

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = find_pid() if ready() else None
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def first_mask_written(masks: Path):
    return lambda: masks.exists() and any(masks.rglob("*.png"))


def test_a_killed_local_worker_process_is_replaced_and_its_file_retried(tmp_path, long_clips, config, caplog):
    masks = tmp_path / "masks"
    jobs = plan_jobs([str(c) for c in long_clips], tmp_path / "seg", masks)

    def a_worker():
        children = multiprocessing.active_children()
        return children[0].pid if children else None

    killed = kill_when(first_mask_written(masks), a_worker)
    summary = run_batch(jobs, load_settings(config), workers=2)
    assert killed, "the worker was not killed in time"
    assert (summary["done"], summary["failed"], summary["frames"]) == (3, 0, 180)
    # the pool died with it: with one file running, that file was charged and retried; with two, both
    # were run again one at a time (neither charged)
    retried = max(r["attempts"] for r in summary["results"]) == 2
    assert retried != ("running them again one at a time" in caplog.text)


def holding(path: Path):
    """The pid of a worker process of ours that has ``path`` open, or None."""
    want = str(path.resolve())
    for child in multiprocessing.active_children():
        try:
            fds = Path(f"/proc/{child.pid}/fd").iterdir()
            if any(os.readlink(fd) == want for fd in fds):
                return child.pid
        except OSError:                      # gone, or an fd closed while we looked
            continue
    return None


def test_a_file_that_kills_its_worker_is_found_without_charging_the_files_beside_it(tmp_path, long_clips,
                                                                                       config, caplog):
    """Every worker that opens the poison file dies (as if it ran out of memory on it). The pool dies with
    it, and with it the file running beside it; those are rerun one at a time: only the poison file
    fails, and the others are done."""
    poison = long_clips[0]
    killed, stop = [], threading.Event()
    caplog.set_level(logging.DEBUG, "segpipe.batch")

    def watch():                     # the first kill waits for a file beside it, as the test is about that
        while not stop.is_set():
            pid = holding(poison)
            if pid and (killed or any(holding(c) for c in long_clips[1:])):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_batch(plan_jobs([str(c) for c in long_clips], tmp_path / "seg", None),
                            load_settings(config), workers=2)
    finally:
        stop.set()
        watcher.join(5)
    assert len(killed) >= 2
    assert (summary["done"], summary["failed"], summary["frames"]) == (2, 1, 120)
    assert [f["src"] for f in summary["failures"]] == [str(poison)] and summary["failures"][0]["attempts"] == 2
    assert "running them again one at a time" in caplog.text
    assert "1 worker started" in caplog.text            # one at a time on one worker, not on N
    assert not any(f"{clip.name} failed" in caplog.text for clip in long_clips[1:])     # never charged
    assert [r["attempts"] for r in summary["results"] if r["status"] == "done"] == [1, 1]


def descends_from_us(pid: int) -> bool:
    """Only processes this test started (Ray's raylet, and its workers, are our descendants)."""
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def ray_actor_pid():
    """A Ray actor of ours busy in Worker.process (Ray names the process after the method it runs)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                busy = (proc / "cmdline").read_bytes().startswith(b"ray::Worker.process")
            except OSError:
                continue
            if busy and descends_from_us(int(proc.name)):
                return int(proc.name)
    return None


def test_a_killed_ray_actor_is_replaced_and_its_file_retried(tmp_path, long_clips, config):
    ray = pytest.importorskip("ray")
    from pipeline.cluster import run_cluster

    masks = tmp_path / "masks"
    jobs = plan_jobs([str(c) for c in long_clips], tmp_path / "seg", masks)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        killed = kill_when(first_mask_written(masks), ray_actor_pid)
        summary = run_cluster(jobs, load_settings(config))
    finally:
        ray.shutdown()
    assert killed, "no busy actor was found to kill"
    assert (summary["done"], summary["failed"], summary["frames"]) == (3, 0, 180)
    retried = [r for r in summary["results"] if r["attempts"] == 2]
    assert len(retried) == 1


def test_sigterm_stops_the_workers_and_closes_their_outputs(tmp_path, long_clips, config):
    import subprocess
    import sys

    import av

    masks, out = tmp_path / "masks", tmp_path / "seg"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", *map(str, long_clips), "--out-dir",
                             str(out), "--masks", str(masks), "--workers", "2", "--config", str(config),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def encoding():      # a video's header is on disk: its first frame reached the encoder (not only --masks)
        return any(v.stat().st_size for v in out.glob("*.mp4")) if out.exists() else False

    deadline = time.monotonic() + 60
    while not encoding() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)      # the header is written just before the first packet: let that packet land too
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
    deadline = time.monotonic() + 10                                     # no worker left behind
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert list(out.glob("*.mp4"))
    for video in out.glob("*.mp4"):                                      # what was written plays
        with av.open(str(video)) as c:
            assert sum(1 for _ in c.decode(video=0)) >= 1
