"""Fixtures for the live tests (helpers are in livehelp.py, imported by name)."""
from __future__ import annotations

import threading
import time

import pytest

from livehelp import StubBackend, write_clip


@pytest.fixture
def clip(tmp_path):
    """1 s at 20 fps, 96x64."""
    return write_clip(tmp_path / "clip.mp4", frames=20)


@pytest.fixture
def stub():
    return StubBackend()


@pytest.fixture
def settings():
    from pipeline.settings import load_settings
    return load_settings(infer={"torch_threads": 1})


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test leaves no pipeline or server thread behind."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("segpipe-")]
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"threads still running: {alive}")
