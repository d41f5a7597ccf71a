"""GPU backends: FP16 parity on CARLA frames, CUDA-graph replay vs eager, TensorRT engine cache. Skipped without CUDA."""
import importlib.util
import logging

import pytest
import torch

import engine
from engine import cache
from engine.frames import label_agreement, sample_frames
from engine.fused import fused_segmenter
from train.checkpoint import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_trt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs TensorRT")


@pytest.fixture(scope="module")
def carla():
    """Shipped checkpoint, 8 CARLA frames on the GPU and the FP32 reference labels."""
    model, ckpt = load_model()
    frames = sample_frames(ckpt["input_size"], 8).cuda()
    with torch.inference_mode():
        want = fused_segmenter(model, ckpt["normalize"], fold_bn=False).cuda()(frames)
    return frames, want


@pytest.mark.parametrize("name", ["torch-cuda", pytest.param("tensorrt", marks=[pytest.mark.trt, needs_trt])])
def test_fp16_parity(name, carla):
    frames, want = carla
    b = engine.load(backend=name, precision="fp16", max_batch=8)
    assert b.device.type == "cuda" and b.precision == "fp16"
    got = b(frames)
    assert got.dtype == torch.uint8 and got.device == frames.device
    assert label_agreement(got, want) >= engine.PARITY_MIN_AGREEMENT


def test_cuda_graph_replay_matches_eager(carla):
    from engine.torch_backend import TorchCUDABackend

    frames, _ = carla
    graphs = engine.load(backend="torch-cuda", precision="fp16", max_batch=8)
    assert isinstance(graphs, TorchCUDABackend) and graphs.mode == "graphs"
    with torch.inference_mode():
        eager = graphs.net(frames.contiguous(memory_format=torch.channels_last))
    for n in (8, 1, 5, 8):  # new and already-captured batch sizes, in mixed order
        assert torch.equal(graphs(frames[:n].contiguous()), eager[:n])


def test_cuda_graph_output_is_not_overwritten(carla):
    frames, _ = carla
    b = engine.load(backend="torch-cuda", precision="fp16", max_batch=8)
    first = b(frames[:2].contiguous())
    keep = first.clone()
    b(frames[2:4].contiguous())  # same batch size: replays the same graph into the same static output
    torch.cuda.synchronize()
    assert torch.equal(first, keep)
    first[0, 0, 0] = 0  # the caller owns the labels (not an inference tensor, not the graph's static output)


def test_cuda_graphs_for_every_batch_share_one_memory_pool():
    """Graphs for batches 1..8 hold about what batch 8's alone does, not the sum of all eight."""
    from engine.torch_backend import TorchCUDABackend

    info = engine.load(backend="torch-cuda", precision="fp16", max_batch=1).info
    cuda = torch.device("cuda")

    def held(batches) -> int:
        model, _ = load_model()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved(cuda)
        backend = TorchCUDABackend(model, info, cuda, "fp16", max_batch=8)
        backend.warmup(batches)
        grown = torch.cuda.memory_reserved(cuda) - before
        backend.release()
        return grown

    assert held(None) <= 1.5 * held([8])


@pytest.mark.trt
@needs_trt
def test_tensorrt_engine_is_cached_and_reused(caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.INFO, logger="segpipe.engine")     # "using cached" is an info line
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    b = engine.load(backend="tensorrt", precision="fp16", max_batch=4)
    entries = [e for e in cache.entries() if e["kind"] == "engine"]
    assert len(entries) == 1 and entries[0]["ok"] and entries[0]["key"] == b.key
    caplog.clear()
    engine.load(backend="tensorrt", precision="fp16", max_batch=4)
    assert "using cached" in caplog.text and "building TensorRT" not in caplog.text
    engine.load(backend="tensorrt", precision="fp16", max_batch=8)  # another batch range: another engine
    assert len([e for e in cache.entries() if e["kind"] == "engine"]) == 2
