"""The one interface every inference backend offers the pipeline.

    labels = backend(frames)   # uint8 (N, 3, H, W) RGB on backend.device -> uint8 (N, H, W) class ids

Subclasses implement ``_run``; ``__call__`` validates the batch first (cheap attribute checks,
no copies) so a wrong input fails with one line saying how to fix it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from train.errors import InvalidInputError


@dataclass(frozen=True)
class ModelInfo:
    """What a backend needs to know about the checkpoint it runs."""
    name: str                       # model variant, e.g. "unet_carla"
    weights: str                    # checkpoint path
    sha256: str                     # of the checkpoint file
    input_size: tuple[int, int]     # (H, W) the backend runs at
    output_size: tuple[int, int]    # (H', W') of the labels (== input_size with same padding)
    normalize: dict
    class_names: list = field(default_factory=list)
    palette: np.ndarray | None = None


class Backend:
    name = "backend"
    channels_last = False       # runs NHWC: the pipeline then stacks its frames straight into that layout
    shared_buffers = False      # one set of device buffers (a TensorRT context, CUDA graphs): calls take turns

    def __init__(self, info: ModelInfo, device: torch.device, precision: str, max_batch: int):
        if max_batch < 1:
            raise InvalidInputError(f"batch range 1..{max_batch} is empty: use --max-batch >= 1")
        self.info = info
        self.device = torch.device(device)
        self.precision = precision
        self.input_size = tuple(info.input_size)
        self.output_size = tuple(info.output_size)
        self.max_batch = int(max_batch)
        self.class_names = list(info.class_names)
        self.palette = info.palette
        self.reason = ""            # why engine.load picked this backend (for logs and bench rows)
        self._turn = threading.Lock()
        self._done = torch.cuda.Event() if self.device.type == "cuda" else None   # the last call's GPU work

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        self.check(frames)
        if not self.shared_buffers:
            return self._run(frames)
        # Pipelines sharing this backend (segment() twice) call it from several threads: one call at a
        # time, and on the GPU the next call's stream waits for the last call's work (no host wait).
        with self._turn:
            if self._done is None:
                return self._run(frames)
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(self._done)
            labels = self._run(frames)
            self._done.record(stream)
            return labels

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def release(self) -> None:
        """Free what it holds on the device now, before another backend is built (it is not used again)."""

    def check(self, frames: torch.Tensor) -> None:
        if not isinstance(frames, torch.Tensor):
            raise InvalidInputError(f"{self.name} takes a torch.uint8 tensor (N, 3, H, W), not {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise InvalidInputError(f"{self.name} takes uint8 RGB frames, not {frames.dtype}: "
                                    f"pass the decoded pixels without normalising them")
        h, w = self.input_size
        shape = tuple(frames.shape)
        if frames.dim() != 4 or shape[1] != 3 or shape[2:] != (h, w):
            if frames.dim() == 4 and shape[3] == 3 and shape[1] != 3:
                fix = "they are (N, H, W, 3): frames.permute(0, 3, 1, 2)"
            elif frames.dim() == 3 and 3 in (shape[0], shape[2]):
                fix = "one frame is a batch of one: frames[None]" + (".permute(0, 3, 1, 2)" if shape[2] == 3 else "")
            elif frames.dim() != 4 or shape[1] != 3:
                fix = "pass 3 RGB channels (grey: expand to 3, RGBA: drop alpha)"
            else:
                fix = f"resize them to {h}x{w} (or load the engine with input_size=({shape[2]}, {shape[3]}))"
            raise InvalidInputError(f"{self.name} expects frames of shape (N, 3, {h}, {w}), got {shape}: {fix}")
        n = frames.shape[0]
        if n == 0:
            raise InvalidInputError(f"an empty batch (0 frames) for {self.name}: pass at least one frame")
        if n > self.max_batch:
            raise InvalidInputError(f"batch of {n} is more than this engine's {self.max_batch}: split the batch or "
                                    f"load with max_batch={n}")
        if frames.device != self.device:
            raise InvalidInputError(f"frames are on {frames.device} but {self.name} runs on {self.device}: "
                                    f"move them with frames.to(backend.device)")

    def __repr__(self) -> str:
        h, w = self.input_size
        return (f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, precision={self.precision!r}, "
                f"input_size={h}x{w}, batch=1..{self.max_batch})")
