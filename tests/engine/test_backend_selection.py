"""auto selection without CUDA, the cached CPU race, and the one-line errors users see."""
import logging

import pytest
import torch

import engine
from engine import cache, loader
from engine.loader import machine_busy as real_machine_busy   # the real one (tests/conftest.py stubs it)
from train.errors import BackendUnavailableError, CheckpointError, InputNotFoundError, InvalidInputError


def test_auto_without_cuda_picks_a_cpu_backend_and_says_why(tiny_ckpt, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "cpu_has_native_bf16", lambda: False)
    caplog.set_level(logging.INFO, logger="segpipe.engine")
    b = engine.load(tiny_ckpt, max_batch=4)
    assert b.name in ("torch-cpu", "onnxruntime") and b.device.type == "cpu" and b.precision == "fp32"
    picked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inference: ")]
    assert picked and f"inference: {b.name} fp32 on cpu at 96x128, batch 1..4: faster on this CPU" in picked[-1]
    assert "ms/frame for torch-cpu fp32 vs onnxruntime" in picked[-1]

    caplog.clear()  # the verdict is cached per (model, size, threads, batch, versions): no second race
    again = engine.load(tiny_ckpt, max_batch=4)
    assert again.name == b.name and "cached" in again.reason
    verdicts = [r for r in cache.entries() if r["kind"] == "cpu-choice"]
    assert any(v["key"]["input_size"] == [96, 128] and v["ok"] for v in verdicts)


def test_a_race_on_a_busy_machine_is_not_cached(tiny_ckpt, caplog, monkeypatch, tmp_path):
    """Contention skews the race (one busy run measured torch-cpu 5x slower): such a verdict is used once,
    not kept."""
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "machine_busy", lambda: "load average 5.0 on 2 cores")
    caplog.set_level(logging.INFO, logger="segpipe.engine")
    b = engine.load(tiny_ckpt, max_batch=4, backend="cpu")
    assert "measured now, busy" in b.reason
    assert "the CPU is busy (load average 5.0 on 2 cores): the backend choice is not cached" in caplog.text
    assert not [r for r in cache.entries() if r["kind"] == "cpu-choice"]


def test_a_race_that_started_on_a_busy_machine_is_not_cached(tiny_ckpt, monkeypatch, tmp_path):
    """A job that ends during the race leaves a quiet machine behind it but a skewed verdict."""
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raced, race = [], loader._race
    monkeypatch.setattr(loader, "_race", lambda *a: raced.append(1) or race(*a))
    monkeypatch.setattr(loader, "machine_busy", lambda: None if raced else "load average 5.0 on 2 cores")
    b = engine.load(tiny_ckpt, max_batch=4, backend="cpu")
    assert "measured now, busy" in b.reason and not [r for r in cache.entries() if r["kind"] == "cpu-choice"]


def test_busy_means_every_core_in_use(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(loader, "other_tasks_running", lambda: 0)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.4, 1.0, 1.0))
    assert real_machine_busy() == "load average 2.4 on 2 cores"
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))     # this process alone, say
    assert real_machine_busy() is None
    monkeypatch.setattr(loader, "other_tasks_running", lambda: 2)     # a job that started seconds ago
    assert real_machine_busy() == "2 other tasks running on 2 cores"


def test_other_tasks_running_reads_this_machine():
    import os
    import subprocess
    import sys
    import time

    if not os.path.exists("/proc/loadavg"):
        pytest.skip("needs Linux's /proc/loadavg")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        time.sleep(0.3)
        assert loader.other_tasks_running() >= 2       # they run (or wait to) now, on 2 cores or more
    finally:
        for p in spinners:
            p.kill()


def test_auto_prefers_tensorrt_then_torch_cuda(tiny_ckpt, monkeypatch):
    """With CUDA present the order is TensorRT, then torch-cuda; a TensorRT failure falls back loudly."""
    calls = []

    def fake_build(name, model, info, dev, precision, max_batch, rebuild=False):
        calls.append(name)
        if name == "tensorrt":
            raise BackendUnavailableError("parser said no")
        b = engine.Backend(info, torch.device("cpu"), precision, max_batch)
        b.name = name
        return b

    monkeypatch.setattr(loader, "resolve_device", lambda device, backend: torch.device("cuda", 0))
    monkeypatch.setattr(loader, "_build_gpu", fake_build)
    monkeypatch.setattr(loader, "_device_name", lambda dev: "fake GPU")
    monkeypatch.setattr(loader, "tensorrt_available", lambda: True)
    b = engine.load(tiny_ckpt)
    assert calls == ["tensorrt", "torch-cuda"] and b.name == "torch-cuda" and "TensorRT failed" in b.reason

    calls.clear()
    monkeypatch.setattr(loader, "tensorrt_available", lambda: False)
    b = engine.load(tiny_ckpt)
    assert calls == ["torch-cuda"] and "pip install 'segpipe[trt]'" in b.reason


@pytest.mark.parametrize("backend", ["tensorrt", "torch-tensorrt"])
def test_missing_tensorrt_says_how_to_install(tiny_ckpt, backend, monkeypatch):
    monkeypatch.setattr(loader, "tensorrt_available", lambda: False)
    with pytest.raises(BackendUnavailableError) as e:
        engine.load(tiny_ckpt, backend=backend)
    assert str(e.value) == (f"--backend {backend} needs TensorRT, which is not installed: "
                            f"pip install 'segpipe[trt]' on a machine with an NVIDIA GPU")


def test_gpu_backend_without_cuda(tiny_ckpt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="torch-cuda needs a CUDA GPU and none is visible: use --backend auto"):
        engine.load(tiny_ckpt, backend="torch-cuda")
    with pytest.raises(BackendUnavailableError, match="sees no CUDA GPU: use --device cpu"):
        engine.load(tiny_ckpt, device="cuda")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"checkpoint .*nope\.pt does not exist: train one with `segpipe train`"):
        engine.load(tmp_path / "nope.pt")


def test_corrupt_checkpoint(tmp_path, tiny_ckpt):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="is corrupt or truncated.*re-download or retrain it"):
        engine.load(bad)


def test_wrong_input_size(tiny_ckpt):
    with pytest.raises(InvalidInputError, match=r"^input 100x130 is not divisible by 16 \(depth 4\): use --size 96x128$"):
        engine.load(tiny_ckpt, input_size=(100, 130))
    with pytest.raises(InvalidInputError, match="size '96-128' is not HxW: write it like 144x192"):
        engine.load(tiny_ckpt, input_size="96-128")


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "tensorrt-llm"}, r"unknown backend 'tensorrt-llm' \(--backend, infer.backend\): choose one of auto, tensorrt"),
    ({"precision": "bf16"}, r"unknown precision 'bf16': choose fp16 \(reduced precision: FP16 on GPUs, BF16 on CPUs"),
    ({"max_batch": 0}, "max_batch must be at least 1"),
    ({"backend": "onnxruntime", "device": "cuda"}, "runs on the CPU|sees no CUDA GPU"),
    ({"device": "gpu0"}, "device 'gpu0' is not a device: use cpu, cuda or cuda:N"),
])
def test_bad_arguments(tiny_ckpt, kwargs, message):
    with pytest.raises((InvalidInputError, BackendUnavailableError), match=message):
        engine.load(tiny_ckpt, **kwargs)


@pytest.mark.parametrize("frame_size, input_size, expected", [
    (None, None, (96, 128)),                # the checkpoint's
    ((480, 640), None, (96, 128)),          # landscape frames: as trained
    ((640, 360), None, (128, 96)),          # portrait frames: turned, not stretched
    ((500, 500), None, (96, 128)),          # square: as trained
    ((640, 360), "64x128", (64, 128)),      # a size asked for wins
])
def test_input_size_follows_the_frames_orientation(tiny_ckpt, frame_size, input_size, expected):
    b = engine.load(tiny_ckpt, backend="onnxruntime", precision="fp32", max_batch=1, input_size=input_size,
                    frame_size=frame_size)
    assert b.input_size == expected


def test_a_gpu_that_is_not_there_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InvalidInputError, match=r"^device cuda:3 does not exist: this machine has 2 GPUs \(cuda:0..cuda:1\)$"):
        loader.resolve_device("cuda:3", "auto")
