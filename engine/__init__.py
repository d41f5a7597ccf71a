"""Inference engines for segpipe checkpoints: one interface over TensorRT, PyTorch CUDA, PyTorch CPU and onnxruntime.

    import engine
    b = engine.load()                 # shipped checkpoint, fastest correct backend on this machine
    labels = b(frames)                # uint8 (N, 3, H, W) RGB on b.device -> uint8 (N, H, W) class ids
"""
from engine.backend import Backend, ModelInfo
from engine.loader import BACKENDS, PARITY_MIN_AGREEMENT, PRECISIONS, load

__all__ = ["Backend", "ModelInfo", "BACKENDS", "PRECISIONS", "PARITY_MIN_AGREEMENT", "load"]
