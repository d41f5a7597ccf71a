"""Fixtures for the pipeline tests; shared helpers are in pipehelp.py (a unique module name,
so it cannot clash with the other folders' conftest modules)."""
import threading
import time
from pathlib import Path

import pytest

from pipehelp import StubBackend, write_clip


@pytest.fixture
def stub():
    return StubBackend()


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_clip(tmp_path / "clip.mp4")


@pytest.fixture
def settings():
    from pipeline.settings import load_settings
    return load_settings(infer={"torch_threads": 1})


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test leaves no pipeline thread behind."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("segpipe-")]
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"pipeline threads still running: {alive}")
