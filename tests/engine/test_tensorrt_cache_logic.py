"""engine/tensorrt.py's cache and rebuild logic, run against a stand-in `tensorrt` module (no GPU, no TensorRT).

The real builder is replaced by a function that returns fake plan bytes; what is tested is when it is called:
once per key, again when any key input changes or the cached file is damaged, and never otherwise.
"""
import logging
import sys
import types

import pytest

from engine import cache, onnx_export
from engine.loader import model_info
from train.checkpoint import load_model


@pytest.fixture
def trt_module(monkeypatch, engine_cache):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.9.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class IProgressMonitor:
        def __init__(self):
            pass

    fake.Logger, fake.IProgressMonitor = Logger, IProgressMonitor
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.delitem(sys.modules, "engine.tensorrt", raising=False)
    import engine.tensorrt as trt_engine

    builds = []

    def fake_build(onnx_bytes, info, device, precision, max_batch):
        builds.append((precision, max_batch))
        return f"plan {precision} {max_batch} {len(onnx_bytes)}".encode()

    real_onnx = onnx_export.cached_onnx

    def shared_onnx(net, checkpoint_sha256, size):  # ONNX exports come from the session cache: fast, and unchanged
        with monkeypatch.context() as m:
            m.setenv("SEGPIPE_CACHE", str(engine_cache))
            return real_onnx(net, checkpoint_sha256, size)

    gpu = {"name": "NVIDIA H100 80GB HBM3", "cc": (9, 0)}
    for module in (onnx_export, trt_engine):    # model_onnx's (ensure_engine) and torch-tensorrt's own
        monkeypatch.setattr(module, "cached_onnx", shared_onnx)
    monkeypatch.setattr(trt_engine, "build_engine", fake_build)
    monkeypatch.setattr(trt_engine, "gpu_identity", lambda device: (gpu["name"], gpu["cc"]))
    yield trt_engine, builds, gpu, fake
    sys.modules.pop("engine.tensorrt", None)


@pytest.fixture
def tiny(tiny_ckpt):
    model, ckpt = load_model(tiny_ckpt)
    return model, model_info(tiny_ckpt, ckpt, model, None)


def test_builds_once_per_key_and_loudly(trt_module, tiny, tmp_path, monkeypatch, caplog):
    trt_engine, builds, gpu, fake = trt_module
    model, info = tiny
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    caplog.set_level(logging.INFO, logger="segpipe.engine")

    plan, key, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 8)
    assert built and builds == [("fp16", 8)]
    assert "building TensorRT FP16 engine for unet_tiny at 96x128, batch 1..8 on NVIDIA H100 80GB HBM3 (sm 9.0), " \
           "TensorRT 10.9.0, because no cached entry for this key" in caplog.text
    assert "built TensorRT engine in" in caplog.text
    onnx_path = trt_engine.cached_onnx(None, info.sha256, info.input_size)
    assert key["onnx_sha256"] == cache.file_sha256(onnx_path)

    again, key2, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 8)
    assert not built and again == plan and key2 == key and len(builds) == 1  # restart: no rebuild

    for change in ("precision", "batch", "trt", "gpu", "cc"):
        args = {"precision": "fp16", "max_batch": 8}
        if change == "precision":
            args["precision"] = "fp32"
        elif change == "batch":
            args["max_batch"] = 16
        elif change == "trt":
            fake.__version__ = "10.10.0"
        elif change == "gpu":
            gpu["name"] = "NVIDIA A100-SXM4-80GB"
        else:
            gpu["cc"] = (8, 0)
        n = len(builds)
        _, _, built = trt_engine.ensure_engine(model, info, "cuda:0", args["precision"], args["max_batch"])
        assert built and len(builds) == n + 1, change


def test_damaged_engine_is_rebuilt_and_force_rebuilds(trt_module, tiny, tmp_path, monkeypatch, caplog):
    trt_engine, builds, _, _ = trt_module
    model, info = tiny
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 4)
    (engine_file,) = tmp_path.glob("engine-*.engine")
    engine_file.write_bytes(b"truncated")
    caplog.set_level(logging.INFO, logger="segpipe.engine")
    _, _, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 4)
    assert built and "does not match its recorded SHA-256" in caplog.text
    _, _, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 4, force=True)
    assert built and len(builds) == 3


def test_other_input_size_is_another_engine(trt_module, tiny_ckpt, tmp_path, monkeypatch):
    trt_engine, builds, _, _ = trt_module
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    model, ckpt = load_model(tiny_ckpt)
    _, k1, _ = trt_engine.ensure_engine(model, model_info(tiny_ckpt, ckpt, model, None), "cuda:0", "fp16", 4)
    _, k2, _ = trt_engine.ensure_engine(model, model_info(tiny_ckpt, ckpt, model, "64x96"), "cuda:0", "fp16", 4)
    assert k1["input_size"] == [96, 128] and k2["input_size"] == [64, 96] and len(builds) == 2
    assert k1["onnx_sha256"] != k2["onnx_sha256"]  # the export at another size is another graph


def test_an_engine_for_a_wider_batch_range_serves_a_narrower_one(trt_module, tiny, tmp_path, monkeypatch):
    """`segpipe build --max-batch 8` once: a run at batch 4 and a live view at batch 1 use that engine."""
    trt_engine, builds, _, _ = trt_module
    model, info = tiny
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    plan8, _, _ = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 8)
    for batch in (4, 1):
        plan, key, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", batch)
        assert not built and plan == plan8 and key["batch_range"] == [1, 8]
    _, key, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 16)     # wider than any: built
    assert built and key["batch_range"] == [1, 16]
    plan, key, _ = trt_engine.ensure_engine(model, info, "cuda:0", "fp16", 4)       # the narrowest that holds 4
    assert plan == plan8 and key["batch_range"] == [1, 8] and builds == [("fp16", 8), ("fp16", 16)]
    _, _, built = trt_engine.ensure_engine(model, info, "cuda:0", "fp32", 4)        # other fields must match
    assert built
