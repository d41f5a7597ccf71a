import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = ROOT.parent / "shared"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def carla_dir() -> Path:
    """12 real CARLA pairs (320x240) in 4 runs of 3 consecutive frames."""
    return FIXTURES / "carla"


@pytest.fixture
def settings():
    """Pipeline settings for tests: one intra-op thread, so tests beside each other do not oversubscribe."""
    from pipeline.settings import load_settings
    return load_settings(infer={"torch_threads": 1})


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """The CPU race caches its verdict only on a quiet machine; a test suite keeps the machine busy, and
    tests of the cache need it cached (the busy case has its own test)."""
    from engine import loader
    monkeypatch.setattr(loader, "machine_busy", lambda: None)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test leaves no pipeline or server thread (named segpipe-*) behind."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("segpipe-")]
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"threads still running: {alive}")
