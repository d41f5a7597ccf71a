"""Fixtures for the pipeline tests; shared helpers are in pipehelp.py (a unique module name,
so it cannot clash with the other folders' conftest modules)."""
from pathlib import Path

import pytest

from pipehelp import StubBackend, write_clip


@pytest.fixture
def stub():
    return StubBackend()


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_clip(tmp_path / "clip.mp4")


