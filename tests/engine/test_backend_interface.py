"""Every CPU backend offers the same interface and the same labels as the PyTorch FP32 model on real CARLA frames."""
import numpy as np
import pytest
import torch

import engine
from engine.frames import label_agreement, sample_frames
from train.checkpoint import load_model
from train.errors import InvalidInputError
from train.precision import cpu_has_native_bf16
from train.trainer import normalizer

CPU_BACKENDS = ["torch-cpu", "onnxruntime", "cpu"]


@pytest.fixture(scope="module")
def reference():
    """The shipped checkpoint run the way training evaluates it: unfused, FP32, NCHW."""
    model, ckpt = load_model()
    norm = normalizer(ckpt["normalize"], torch.device("cpu"))
    frames = sample_frames(ckpt["input_size"])  # the 4 shipped CARLA frames, from 4 drives
    with torch.inference_mode():
        labels = model(norm(frames)).argmax(1).to(torch.uint8)
    return ckpt, frames, labels


@pytest.fixture(scope="module", params=CPU_BACKENDS)
def backend(request):
    return engine.load(backend=request.param, max_batch=4)


def test_attributes(backend, reference):
    ckpt, _, _ = reference
    assert backend.name in ("torch-cpu", "onnxruntime")
    # fp16 asked: torch-cpu runs BF16 on CPUs with native BF16, everything else FP32
    reduced = backend.name == "torch-cpu" and cpu_has_native_bf16()
    assert backend.device == torch.device("cpu") and backend.precision == ("bf16" if reduced else "fp32")
    assert backend.input_size == tuple(ckpt["input_size"])
    assert backend.max_batch == 4
    assert backend.class_names == ckpt["class_names"] and len(backend.class_names) == 23
    assert backend.palette.dtype == np.uint8 and backend.palette.shape == (23, 3)
    assert backend.reason


def test_same_labels_as_pytorch_fp32(backend, reference):
    _, frames, want = reference
    got = backend(frames)
    assert got.dtype == torch.uint8 and got.shape == want.shape and got.device == backend.device
    need = 0.999 if backend.precision == "fp32" else engine.PARITY_MIN_AGREEMENT
    assert label_agreement(got, want) >= need
    for n in (1, 3):  # every batch size in range, not just the one tried first
        assert label_agreement(backend(frames[:n].contiguous()), want[:n]) >= need


def test_output_is_not_aliased_and_is_ours(backend, reference):
    _, frames, _ = reference
    first = backend(frames[:1].contiguous())
    keep = first.clone()
    backend(frames[1:2].contiguous())
    assert torch.equal(first, keep)
    first[0, 0, 0] = 0  # an ordinary tensor: the caller may draw into it (an inference tensor would refuse)


@pytest.mark.parametrize("bad, message", [
    (lambda f: f.float(), "takes uint8 RGB frames, not torch.float32"),
    (lambda f: f[:, :, :-16], r"expects frames of shape \(N, 3, {h}, {w}\), got \(4, 3, {h16}, {w}\): resize them "
                              r"to {h}x{w} \(or load the engine with input_size=\({h16}, {w}\)\)"),
    (lambda f: f[:, :2], r"expects frames of shape \(N, 3, {h}, {w}\), got \(4, 2, {h}, {w}\): pass 3 RGB channels"),
    (lambda f: f.permute(0, 2, 3, 1), r"got \(4, {h}, {w}, 3\): they are \(N, H, W, 3\): frames.permute\(0, 3, 1, 2\)"),
    (lambda f: f[0].permute(1, 2, 0), r"got \({h}, {w}, 3\): one frame is a batch of one: frames\[None\].permute"),
    (lambda f: f[:0], r"an empty batch \(0 frames\) for .*: pass at least one frame"),
    (lambda f: torch.cat([f, f]), r"batch of 8 is more than this engine's 4: split the batch or load with max_batch=8"),
    (lambda f: f.numpy(), "takes a torch.uint8 tensor"),
])
def test_bad_frames_fail_with_a_fix(backend, reference, bad, message):
    _, frames, _ = reference
    h, w = backend.input_size
    with pytest.raises(InvalidInputError, match=message.format(h=h, w=w, h16=h - 16)):
        backend(bad(frames))


def test_input_size_override(tiny_ckpt):
    b = engine.load(tiny_ckpt, backend="torch-cpu", input_size="64x96", max_batch=2)
    assert b.input_size == (64, 96)
    assert b(sample_frames((64, 96), 2)).shape == (2, 64, 96)


def test_the_infer_stage_hands_each_backend_its_own_layout(backend, reference):
    """NHWC backends get their batch stacked straight into channels_last (one copy), the others NCHW;
    the labels are the backend's own either way."""
    from pipeline.frame import Frame
    from pipeline.infer import Infer

    _, frames, _ = reference
    seen = []
    run = backend._run
    backend._run = lambda x: seen.append(x) or run(x)
    try:
        chw = [torch.from_numpy(f.permute(1, 2, 0).numpy().copy()).permute(2, 0, 1) for f in frames]  # as preprocess
        out = Infer(backend, batch=4).process([Frame(i, i, 1, None, 0.0, tensor=t) for i, t in enumerate(chw)])
    finally:
        backend._run = run
    layout = torch.channels_last if backend.channels_last else torch.contiguous_format
    assert seen[0].is_contiguous(memory_format=layout)
    assert torch.equal(torch.stack([f.labels for f in out]), backend(frames))


def test_a_backend_with_shared_buffers_takes_calls_one_at_a_time():
    """segment() twice with one TensorRT or CUDA-graph backend calls it from two threads: the calls must
    not interleave (they share one execution context or static input), and each gets its own labels."""
    import threading
    import time

    from engine.backend import Backend, ModelInfo

    class OneBuffer(Backend):
        shared_buffers = True

        def __init__(self):
            super().__init__(ModelInfo("t", "", "", (8, 8), (8, 8), {}), "cpu", "fp32", 4)
            self.buffer, self.inside, self.overlaps = None, 0, 0

        def _run(self, frames):
            self.inside += 1
            self.overlaps += self.inside > 1
            self.buffer = frames[:, 0].clone()      # the shared input, as a context's bound address
            time.sleep(0.002)                       # the other thread would overwrite it here
            labels = self.buffer.clone()
            self.inside -= 1
            return labels

    backend, wrong = OneBuffer(), []

    def caller(value):
        frames = torch.full((2, 3, 8, 8), value, dtype=torch.uint8)
        for _ in range(50):
            if not bool((backend(frames) == value).all()):
                wrong.append(value)

    threads = [threading.Thread(target=caller, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.overlaps == 0 and wrong == []
