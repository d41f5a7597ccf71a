"""torch-cpu BF16: chosen on CPUs with native BF16 when reduced precision is asked, parity-gated like FP16.

``cpu_has_native_bf16`` is patched both ways, so every path runs on any CPU (BF16 is emulated, and slow,
where the CPU lacks it; the labels are the same)."""
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

import engine
from engine import cache, loader
from engine.frames import label_agreement, sample_frames
from engine.fused import fused_segmenter
from train.checkpoint import load_model
from train.errors import InvalidInputError
from train.precision import autocast_dtype


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "cpu_has_native_bf16", lambda: True)


def test_torch_cpu_runs_bf16_and_matches_fp32_on_carla_frames(bf16_cpu, caplog):
    caplog.set_level(logging.INFO, logger="segpipe.engine")
    b = engine.load(backend="torch-cpu", max_batch=4)  # the shipped model; fp16 (reduced precision) is the default
    assert (b.name, b.precision) == ("torch-cpu", "bf16")
    assert any(r.getMessage().startswith("BF16 parity: torch-cpu labels agree with FP32") for r in caplog.records)
    model, ckpt = load_model()
    frames = sample_frames(ckpt["input_size"], 4)
    with torch.inference_mode():
        want = fused_segmenter(model, ckpt["normalize"], fold_bn=False)(frames)
    got = b(frames)
    assert got.dtype == torch.uint8 and got.shape == want.shape
    assert label_agreement(got, want) >= engine.PARITY_MIN_AGREEMENT


def test_fp32_asked_stays_fp32(bf16_cpu):
    assert engine.load(backend="torch-cpu", precision="fp32", max_batch=2).precision == "fp32"


def test_no_native_bf16_runs_fp32(monkeypatch):
    monkeypatch.setattr(loader, "cpu_has_native_bf16", lambda: False)
    assert engine.load(backend="torch-cpu", max_batch=2).precision == "fp32"


def test_bf16_parity_failure_falls_back_to_fp32_loudly(bf16_cpu, monkeypatch, caplog):
    monkeypatch.setattr(loader, "precision_agreement", lambda backend, model, info: 0.9)
    b = engine.load(backend="torch-cpu", max_batch=2)
    assert (b.name, b.precision) == ("torch-cpu", "fp32")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("BF16 PARITY FAILED: torch-cpu BF16 labels agree with FP32 on only 90.000%")
               for m in warned)


def test_cpu_race_is_cached_per_precision(bf16_cpu):
    """A BF16 race and an FP32 race are separate verdicts: one never answers for the other."""
    b16 = engine.load(max_batch=3)  # batch 3: a key no other test races
    assert "for torch-cpu bf16 vs onnxruntime" in b16.reason and "measured now" in b16.reason
    b32 = engine.load(precision="fp32", max_batch=3)
    assert "for torch-cpu fp32 vs onnxruntime" in b32.reason and "measured now" in b32.reason
    again = engine.load(max_batch=3)
    assert "for torch-cpu bf16 vs onnxruntime" in again.reason and "cached" in again.reason
    verdicts = {v["key"]["precision"] for v in cache.entries() if v["kind"] == "cpu-choice" and v["key"]["batch"] == 3}
    assert verdicts == {"bf16", "fp32"}


def test_training_precision_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cuda) is torch.float16 and autocast_dtype(cpu) is None  # auto: FP32 on any CPU
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp32") is None
    with pytest.raises(InvalidInputError, match="precision fp16 needs a CUDA GPU: use bf16 or fp32 on the CPU"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(InvalidInputError, match="precision must be one of auto, fp32, bf16, fp16, not 'int8'"):
        autocast_dtype(cpu, "int8")


def test_precision_parity_benchmark_scores_each_backend(carla_dir, tmp_path, monkeypatch, capsys):
    """benchmarks/precision_parity.py: one row per backend and precision that ran, scored on real frames."""
    spec = importlib.util.spec_from_file_location(
        "precision_parity", Path(__file__).parents[2] / "benchmarks" / "precision_parity.py")
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "cpu_has_native_bf16", lambda: True)
    assert parity.main(["--data", str(carla_dir), "--json", str(tmp_path / "parity.json")]) == 0
    rows = json.loads((tmp_path / "parity.json").read_text())
    assert [(r["backend"], r["precision"]) for r in rows] == [("torch-cpu", "fp32"), ("torch-cpu", "bf16"),
                                                             ("onnxruntime", "fp32")]
    assert rows[0]["agreement_with_first"] == 1.0 and rows[0]["frames"] == 3  # the fixture's one validation run
    for r in rows:
        assert 0.5 < r["pixel_accuracy"] <= 1 and 0 < r["miou"] <= 1
        assert r["agreement_with_first"] >= engine.PARITY_MIN_AGREEMENT
    assert "labels = torch-cpu fp32 on" in capsys.readouterr().out
