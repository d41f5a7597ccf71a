"""Fixtures for the live tests (helpers are in livehelp.py, imported by name)."""
from __future__ import annotations


import pytest

from livehelp import StubBackend, write_clip


@pytest.fixture
def clip(tmp_path):
    """1 s at 20 fps, 96x64."""
    return write_clip(tmp_path / "clip.mp4", frames=20)


@pytest.fixture
def stub():
    return StubBackend()


