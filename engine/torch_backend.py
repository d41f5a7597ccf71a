"""PyTorch backends: CPU (FP32 or BF16, channels_last) and CUDA (FP16, channels_last, CUDA graphs)."""
from __future__ import annotations

import logging

import torch
from torch import nn

from engine.backend import Backend, ModelInfo
from engine.fused import fused_segmenter

log = logging.getLogger("segpipe.engine")


# The backends run under no_grad rather than inference_mode: labels from every backend are then ordinary
# tensors the caller may modify in place (an inference tensor refuses that outside inference_mode), and
# for ~50 kernel launches per call the difference in overhead is not measurable.


class TorchCPUBackend(Backend):
    """The CPU: BatchNorm folded, channels_last, no autograd; FP32, or BF16 weights and activations
    (about twice the speed on CPUs with native BF16: AVX512-BF16 or AMX)."""
    name = "torch-cpu"
    channels_last = True

    def __init__(self, model: nn.Module, info: ModelInfo, max_batch: int = 8, precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"torch-cpu runs fp32 or bf16, not {precision!r}")
        super().__init__(info, torch.device("cpu"), precision, max_batch)
        net = fused_segmenter(model, info.normalize)
        if precision == "bf16":
            net.model.to(torch.bfloat16)  # normalisation buffers stay FP32 (see FusedSegmenter)
        self.net = net.to(memory_format=torch.channels_last)

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # NHWC already from the pipeline (a no-op then); every conv runs in oneDNN's native layout
            return self.net(frames.contiguous(memory_format=torch.channels_last))


class TorchCUDABackend(Backend):
    """CUDA: FP16 (or FP32) weights and activations, channels_last, one CUDA graph per batch size.

    Each graph owns a static uint8 input and a static uint8 output. A call copies the frames into the
    static input (device to device, converting to channels_last on the way), replays the graph on the
    current stream and returns a clone of the static output, so the caller's labels are never
    overwritten by the next call. ``mode="compile"`` runs the net through torch.compile (inductor)
    before capture; ``mode="eager"`` skips graphs (reference for tests).
    """
    name = "torch-cuda"
    channels_last = True
    shared_buffers = True       # each graph's static input and output
    MODES = ("graphs", "compile", "eager")

    def __init__(self, model: nn.Module, info: ModelInfo, device: torch.device, precision: str = "fp16",
                 max_batch: int = 8, mode: str = "graphs"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {mode!r}")
        super().__init__(info, device, precision, max_batch)
        torch.backends.cudnn.benchmark = True  # fixed shapes per graph: let cuDNN pick the fastest kernels once
        net = fused_segmenter(model, info.normalize)
        if precision == "fp16":
            net.model.half()  # normalisation buffers stay FP32 (see FusedSegmenter)
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self.mode = mode
        self._fn = torch.compile(self.net, dynamic=False, mode="max-autotune-no-cudagraphs") if mode == "compile" \
            else self.net
        self._graphs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self._pool = None           # one memory pool for all the graphs: they never run at once (Backend._turn)

    def warmup(self, batches=None) -> None:
        """Capture the graphs for ``batches`` now (default: every batch size up to the largest) instead of on
        first use: a partial batch (a slow decoder, the end of a file) would otherwise stall the run while its
        graph is captured. The largest first: the smaller ones fit in the memory it leaves free, so the
        graphs need about what the largest needs rather than the sum of all."""
        for n in sorted(batches or range(1, self.max_batch + 1), reverse=True):
            self._graph(n)

    def _graph(self, n: int):
        entry = self._graphs.get(n)
        if entry is not None:
            return entry
        h, w = self.input_size
        with torch.cuda.device(self.device), torch.no_grad():
            static_in = torch.zeros((n, 3, h, w), dtype=torch.uint8, device=self.device)
            static_in = static_in.contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuDNN autotuning, inductor compilation, lazy inits: all before capture
                    self._fn(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # thread_local: a decoder thread's CUDA calls during a lazy capture must not invalidate it
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                static_out = self._fn(static_in)
        log.debug("torch-cuda: captured a CUDA graph for batch %d", n)
        self._graphs[n] = entry = (static_in, static_out, graph)
        return entry

    def release(self) -> None:
        self._graphs.clear()
        self._pool = None
        torch.cuda.empty_cache()

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        if self.mode == "eager":
            with torch.no_grad():
                return self.net(frames.contiguous(memory_format=torch.channels_last))
        static_in, static_out, graph = self._graph(frames.shape[0])
        static_in.copy_(frames)
        graph.replay()
        return static_out.clone()
