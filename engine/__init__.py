"""Inference engines for segpipe checkpoints: one interface over TensorRT, PyTorch CUDA, PyTorch CPU and onnxruntime.

    import engine
    b = engine.load()                 # shipped checkpoint, fastest correct backend on this machine
    labels = b(frames)                # uint8 (N, 3, H, W) RGB on b.device -> uint8 (N, H, W) class ids
"""
import importlib

_EXPORTS = {"Backend": "engine.backend", "ModelInfo": "engine.backend", "BACKENDS": "engine.loader",
            "PRECISIONS": "engine.loader", "PARITY_MIN_AGREEMENT": "engine.loader", "load": "engine.loader"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Torch loads with the first of these, not with ``import engine``: `segpipe --help` stays quick."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
