"""A size or batch whose activations cannot fit is refused in one line before anything runs (the kernel's
OOM killer would end the process with no message)."""
import re
from pathlib import Path

import pytest
import torch

from engine.loader import activation_bytes, check_memory
from pipeline.cli import main
from train.checkpoint import load_model
from train.errors import InvalidInputError
from train.model import create_model

GIB = 2 ** 30
SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.mp4"


def test_activation_memory_grows_with_pixels_and_batch():
    model, _ = load_model(None)
    one = activation_bytes(model, (144, 192), 1)
    assert activation_bytes(model, (288, 384), 1) == pytest.approx(4 * one, rel=0.01)
    assert activation_bytes(model, (144, 192), 8) == pytest.approx(8 * one, rel=0.01)
    # a forward at 144x192 makes ~47 MB of layer outputs in FP32 (16 filters), about a third live at once
    assert 8e6 < one < 40e6
    valid = create_model("unet_carla", padding="valid")           # its mirrored border counts too
    assert activation_bytes(valid, (144, 192), 1) > 2 * activation_bytes(create_model("unet_carla"), (144, 192), 1)


def test_too_large_is_refused_naming_a_batch_or_a_size_that_fits(monkeypatch):
    model, _ = load_model(None)
    per_frame = activation_bytes(model, (960, 1280), 1)
    monkeypatch.setattr("engine.loader.free_memory", lambda dev: int(2.5 * per_frame))
    check_memory(model, (960, 1280), 2, torch.device("cpu"))         # fits
    with pytest.raises(InvalidInputError, match=r"input 960x1280 at batch 8 needs about [\d.]+ GiB .* this "
                                                r"machine has [\d.]+ GiB free: use a batch of 2 or less$"):
        check_memory(model, (960, 1280), 8, torch.device("cpu"))
    monkeypatch.setattr("engine.loader.free_memory", lambda dev: per_frame // 3)
    with pytest.raises(InvalidInputError, match=r"use --size \d+x\d+ or less$") as refused:
        check_memory(model, (960, 1280), 1, torch.device("cpu"))
    h, w = map(int, re.search(r"--size (\d+)x(\d+)", str(refused.value)).groups())
    assert h % 16 == 0 and w % 16 == 0 and abs(h / w - 0.75) < 0.05
    check_memory(model, (h, w), 1, torch.device("cpu"))             # the size it names fits


def test_unknown_free_memory_checks_nothing(monkeypatch):
    model, _ = load_model(None)
    monkeypatch.setattr("engine.loader.free_memory", lambda dev: None)
    check_memory(model, (8192, 8192), 64, torch.device("cpu"))


def test_run_with_a_size_too_large_is_one_line_before_any_frame(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("engine.loader.free_memory", lambda dev: GIB)
    out = tmp_path / "seg.mp4"
    assert main(["run", str(SAMPLE), "--out", str(out), "--size", "2880x3840", "--batch", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"input 2880x3840 at batch 1 needs about .* use --size \d+x\d+ or less", err)
    assert not out.exists()
