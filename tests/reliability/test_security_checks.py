"""Security: a checkpoint that would run code is refused before it can; cached engine files are
verified by key and hash before use; the live server binds 127.0.0.1 unless told otherwise.

Also tested elsewhere (not repeated here): checkpoint schema checks (tests/train/test_training.py),
the cache's lookup rejecting damaged or foreign entries (tests/engine/test_engine_cache.py), and the
live server serving only its page, stream, frame and stats, never a file path from a request
(tests/live/test_live_server.py::test_routes_and_nothing_else).
"""
from __future__ import annotations

import os

import torch

from faultmedia import write_video
from pipeline.run import settings_path


class RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, cli):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "segpipe-unet/1", "model": "unet_tiny", "state_dict": {}, "hook": RunsCode(marker)}, evil)
    out = tmp_path / "seg.mp4"
    code, last, err, _ = cli("run", write_video(tmp_path / "clip.mp4", 3), "--out", out, "--weights", evil,
                             stub=False)
    assert code == 2 and "was refused: it holds Python objects that would run code" in last, err
    assert not marker.exists()                       # the payload never ran
    assert not out.exists() and not settings_path(out).exists()


def test_a_tampered_cache_entry_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """engine.onnx_export.cached_onnx goes through cache.lookup: a replaced artefact is never used."""
    from engine import cache, onnx_export

    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    exports = []
    monkeypatch.setattr(onnx_export, "to_onnx_bytes", lambda net, size: exports.append(size) or b"real-onnx")
    monkeypatch.setattr(onnx_export, "check_export", lambda net, data, size: (1.0, 0.0))
    path = onnx_export.cached_onnx(None, "sha-of-the-checkpoint", (32, 48))
    assert path.read_bytes() == b"real-onnx" and len(exports) == 1
    assert onnx_export.cached_onnx(None, "sha-of-the-checkpoint", (32, 48)) == path and len(exports) == 1  # a hit

    path.write_bytes(b"evil-onnx")                   # same size, other bytes
    again = onnx_export.cached_onnx(None, "sha-of-the-checkpoint", (32, 48))
    assert len(exports) == 2 and again.read_bytes() == b"real-onnx"
    assert all(e["ok"] for e in cache.entries())


def test_the_live_server_binds_localhost_unless_told_otherwise():
    from pipeline.cli import build_parser
    from pipeline.server import FrameHub, LiveServer, parse_address

    args = build_parser().parse_args(["live", "--serve"])            # --serve with no address
    assert parse_address(args.serve) == ("127.0.0.1", 8080)
    assert parse_address(None)[0] == parse_address(":0")[0] == parse_address("0")[0] == "127.0.0.1"
    server = LiveServer(*parse_address(":0"), FrameHub(), dict)
    try:
        assert server.address[0] == "127.0.0.1"                      # the socket really is on loopback
    finally:
        server.stop()
