"""Inference engines for segpipe checkpoints: one interface over TensorRT, PyTorch CUDA, PyTorch CPU and onnxruntime.

    import engine
    b = engine.load()                 # shipped checkpoint, fastest correct backend on this machine
    labels = b(frames)                # uint8 (N, 3, H, W) RGB on b.device -> uint8 (N, H, W) class ids
"""
import importlib

# Here, not in engine.loader, so command-line parsers can offer them without loading torch.
BACKENDS = ("auto", "tensorrt", "torch-tensorrt", "torch-cuda", "cpu", "torch-cpu", "onnxruntime")
CPU_BACKENDS = ("cpu", "torch-cpu", "onnxruntime")
PRECISIONS = ("fp16", "fp32")  # fp16: reduced precision where it is fast (BF16 on the CPU), parity-checked

_EXPORTS = {"Backend": "engine.backend", "ModelInfo": "engine.backend", "PARITY_MIN_AGREEMENT": "engine.loader",
            "load": "engine.loader"}
__all__ = ["BACKENDS", "CPU_BACKENDS", "PRECISIONS", *_EXPORTS]


def __getattr__(name: str):
    """Torch loads with the first of these, not with ``import engine``: `segpipe --help` stays quick."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
