"""Fixtures for the reliability tests (helpers and media makers are in faultmedia.py, imported by name).

``cli`` runs `segpipe` in-process through pipeline.cli.main and returns its exit code, its last stderr
line, all of stderr plus the log records, and stdout; with ``stub=True`` (the default) the model is the stand-in backend, so a test
of error handling does not spend its seconds on inference.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from faultmedia import StubBackend


@pytest.fixture
def cli(monkeypatch, capsys, caplog):
    import pipeline.run
    from pipeline.cli import main

    def run(*args, stub: bool = True):
        if stub:
            monkeypatch.setattr(pipeline.run, "load_backend", lambda *args, **kwargs: StubBackend())
        args = [str(a) for a in args]
        if args[0] == "run" and "--no-progress" not in args:
            args.append("--no-progress")
        try:
            code = main(args)
        except SystemExit as e:          # argparse: a bad option value
            code = e.code
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        logged = caplog.text                 # warnings go through logging (set up by the first main())
        caplog.clear()
        return code, (lines[-1] if lines else ""), captured.err + logged, captured.out

    return run


def mounted_tmpfs(mnt: Path, options: str, what: str):
    """Mount a tmpfs at ``mnt`` for the test, or skip where mounting is not permitted."""
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount {what} here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A 200 kB RAM disk (a disk that fills)."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=200k", "a tmpfs")


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (root ignores chmod)."""
    yield from mounted_tmpfs(tmp_path / "ro", "size=64k,ro", "a read-only tmpfs")


