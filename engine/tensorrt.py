"""TensorRT backends. Importing this module needs ``tensorrt``; the loader only imports it when it is installed.

Primary path: the TensorRT 10 Python API builds an engine from the checked ONNX export (``tensorrt``).
Second path to the same kind of engine: torch-tensorrt's dynamo frontend (``torch-tensorrt``).
Both store their artefacts in the engine cache (``engine.cache``) under ``engine_key``: ONNX hash,
TensorRT version, GPU name and compute capability, precision, input size and batch range. A cached
engine is verified against its sidecar key and SHA-256 before it is deserialised, so it is rebuilt
when (and only when) one of those changes or the file is damaged.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time

import torch

from engine import cache
from engine.backend import Backend, ModelInfo
from engine.fused import fused_segmenter
from engine.onnx_export import INPUT_NAME, OUTPUT_NAME, cached_onnx, model_onnx
from train.errors import BackendUnavailableError, InvalidInputError

import tensorrt as trt  # noqa: E402  (the loader checked it is installed)

log = logging.getLogger("segpipe.engine")
_TRT_LOGGER = trt.Logger(trt.Logger.WARNING)


def gpu_identity(device: torch.device) -> tuple[str, tuple[int, int]]:
    return torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)


def key_for(info: ModelInfo, onnx_sha256: str, device: torch.device, precision: str, max_batch: int,
            builder: str = "tensorrt") -> dict:
    name, cc = gpu_identity(device)
    return cache.engine_key(onnx_sha256=onnx_sha256, trt_version=trt.__version__, gpu_name=name, compute_capability=cc,
                            precision=precision, input_size=info.input_size, batch_range=(1, max_batch), builder=builder)


class _Progress(trt.IProgressMonitor):
    """Logs the builder's top-level phases with their durations (steps at debug level)."""

    def __init__(self):
        trt.IProgressMonitor.__init__(self)
        self._started: dict[str, float] = {}

    def phase_start(self, phase_name, parent_phase, num_steps):
        self._started[phase_name] = time.perf_counter()
        (log.info if parent_phase is None else log.debug)("  TensorRT: %s (%d steps)", phase_name, num_steps)

    def step_complete(self, phase_name, step):
        log.debug("  TensorRT: %s step %d", phase_name, step)
        return True  # False would cancel the build

    def phase_finish(self, phase_name):
        t0 = self._started.pop(phase_name, None)
        if t0 is not None:
            log.debug("  TensorRT: %s done in %.1f s", phase_name, time.perf_counter() - t0)


def _timing_cache_path(device: torch.device):
    name, cc = gpu_identity(device)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    return cache.cache_dir() / f"timing-trt{trt.__version__}-{slug}-sm{cc[0]}{cc[1]}.cache"


def build_engine(onnx_bytes: bytes, info: ModelInfo, device: torch.device, precision: str, max_batch: int) -> bytes:
    """Parse the ONNX, set one optimisation profile over batch 1..max_batch, FP16 if asked, reuse the timing cache."""
    with torch.cuda.device(device):        # the builder, its CUDA context and the build on this GPU
        return _build(onnx_bytes, info, device, precision, max_batch)


def _build(onnx_bytes: bytes, info: ModelInfo, device: torch.device, precision: str, max_batch: int) -> bytes:
    h, w = info.input_size
    builder = trt.Builder(_TRT_LOGGER)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, _TRT_LOGGER)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT could not parse the ONNX export ({errors[:300]}): "
                                      f"use --backend torch-cuda and report this")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, h, w), (max_batch, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    timing_path = _timing_cache_path(device)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
    if timing is None or not config.set_timing_cache(timing, False):  # False: refuse another device's or version's
        log.warning("TensorRT refused the timing cache %s; it is removed and timed afresh", timing_path)
        timing_path.unlink(missing_ok=True)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    progress = _Progress()
    config.progress_monitor = progress
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailableError("TensorRT failed to build the engine (see its messages above): "
                                      "use --backend torch-cuda")
    try:                                      # a speed-up for the next build, not needed for this one
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        cache._atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    except OSError as e:
        log.warning("could not save the TensorRT timing cache %s (%s)", timing_path, e.strerror or e)
    return bytes(plan)


def ensure_engine(model, info: ModelInfo, device: torch.device, precision: str, max_batch: int,
                  force: bool = False) -> tuple[bytes, dict, bool]:
    """The engine plan for this key: from the cache (verified) or built now, loudly. Returns (plan, key, built)."""
    onnx_path = model_onnx(model, info)
    key = key_for(info, cache.file_sha256(onnx_path), device, precision, max_batch)
    hit, found = cache.lookup_covering(key, ".engine")
    if hit.hit and not force:
        log.info("TensorRT engine: using cached %s (batch %d..%d)", hit.path, *found["batch_range"])
        return hit.path.read_bytes(), found, False
    h, w = info.input_size
    gpu, cc = gpu_identity(device)
    log.warning("building TensorRT %s engine for %s at %dx%d, batch 1..%d on %s (sm %d.%d), TensorRT %s, because %s; "
                "this is done once per key and cached in %s", precision.upper(), info.name, h, w, max_batch, gpu,
                cc[0], cc[1], trt.__version__, "--force was given" if force else hit.reason, cache.cache_dir())
    t0 = time.perf_counter()
    plan = build_engine(onnx_path.read_bytes(), info, device, precision, max_batch)
    seconds = time.perf_counter() - t0
    path = cache.store(key, plan, ".engine", build_seconds=round(seconds, 1), weights=info.weights, model=info.name)
    log.warning("built TensorRT engine in %.1f s (%.1f MB): %s", seconds, len(plan) / 1e6, path)
    return plan, key, True


class TensorRTBackend(Backend):
    """Runs a serialized engine with torch CUDA tensors bound as I/O. It enqueues on a stream of its own that
    waits for torch's current stream and is waited for by it: on the legacy default stream TensorRT adds a
    synchronisation to every call."""
    name = "tensorrt"
    shared_buffers = True       # one execution context

    def __init__(self, plan: bytes, info: ModelInfo, device: torch.device, precision: str, max_batch: int, key: dict):
        super().__init__(info, device, precision, max_batch)
        self.key = key
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(_TRT_LOGGER)
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise BackendUnavailableError("TensorRT could not load the cached engine: run `segpipe build --force`")
            self.context = self.engine.create_execution_context()
            if self.context is None:     # not BackendUnavailableError: rebuilding the engine would not help
                raise InvalidInputError("TensorRT could not create an execution context (not enough GPU memory?): "
                                        "free the GPU, lower --max-batch, or use --backend torch-cuda")
            self._stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        if modes.get(INPUT_NAME) != trt.TensorIOMode.INPUT or modes.get(OUTPUT_NAME) != trt.TensorIOMode.OUTPUT:
            raise BackendUnavailableError(f"the cached engine has tensors {names}, not {INPUT_NAME}/{OUTPUT_NAME}: "
                                          f"run `segpipe build --force`")
        if self.engine.get_tensor_dtype(OUTPUT_NAME) != trt.DataType.UINT8:
            raise BackendUnavailableError("the cached engine does not return uint8 labels: run `segpipe build --force`")
        self._batch = None

    def release(self) -> None:
        self._stream.synchronize()
        self.context = self.engine = None
        torch.cuda.empty_cache()

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):    # the engine's GPU, whichever is current in this thread
            return self._execute(frames.contiguous())   # contiguous: a no-op for the pipeline's batches

    def _execute(self, frames: torch.Tensor) -> torch.Tensor:
        n = frames.shape[0]
        if n != self._batch:
            if not self.context.set_input_shape(INPUT_NAME, tuple(frames.shape)):
                raise RuntimeError(f"TensorRT refused input shape {tuple(frames.shape)} (profile 1..{self.max_batch})")
            self._batch = n
        if frames.data_ptr() % 256:    # TensorRT wants 256-byte aligned I/O: a caller's slice may not be
            frames = frames.clone()
        labels = torch.empty((n, *self.output_size), dtype=torch.uint8, device=self.device)
        self.context.set_tensor_address(INPUT_NAME, frames.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, labels.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)     # frames (and labels' memory) are ready on current
        ok = self.context.execute_async_v3(self._stream.cuda_stream)
        current.wait_stream(self._stream)     # so both tensors outlive the engine's use of them
        if not ok:
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's message above)")
        return labels


class TorchTensorRTBackend(Backend):
    """torch-tensorrt dynamo compile of the fused module; the compiled program is cached like an engine."""
    name = "torch-tensorrt"

    def __init__(self, module, info: ModelInfo, device: torch.device, precision: str, max_batch: int, key: dict):
        super().__init__(info, device, precision, max_batch)
        self.module, self.key = module, key

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(frames)


def _torch_tensorrt(model, info: ModelInfo, device: torch.device, precision: str, max_batch: int,
                    force: bool = False) -> Backend:
    import torch_tensorrt

    net = fused_segmenter(model, info.normalize)     # keyed by its ONNX export, compiled on a miss
    onnx_path = cached_onnx(net, info.sha256, info.input_size)
    key = key_for(info, cache.file_sha256(onnx_path), device, precision, max_batch,
                  builder=f"torch-tensorrt/{torch_tensorrt.__version__}")
    h, w = info.input_size
    hit, found = cache.lookup_covering(key, ".ep")
    if hit.hit and not force:
        try:
            program = torch.export.load(str(hit.path)).module()
        except Exception as e:     # saved dynamic-shape programs do not always load back: compile again
            log.warning("could not load the cached torch-tensorrt program %s (%s: %s); compiling it again",
                        hit.path, type(e).__name__, str(e)[:200])
        else:
            log.info("torch-tensorrt: using cached %s (batch %d..%d)", hit.path, *found["batch_range"])
            return TorchTensorRTBackend(program, info, device, precision, max_batch, found)
    log.warning("compiling with torch-tensorrt (dynamo, %s) for %s at %dx%d, batch 1..%d, because %s",
                precision.upper(), info.name, h, w, max_batch, "--force was given" if force else hit.reason)
    if precision == "fp16":
        net.model.half()
    net = net.to(device)
    spec = torch_tensorrt.Input(min_shape=(1, 3, h, w), opt_shape=(max_batch, 3, h, w), max_shape=(max_batch, 3, h, w),
                                dtype=torch.uint8)
    precisions = {torch.float16, torch.float32} if precision == "fp16" else {torch.float32}
    t0 = time.perf_counter()
    compiled = torch_tensorrt.compile(net, ir="dynamo", inputs=[spec], enabled_precisions=precisions)
    log.warning("torch-tensorrt compiled in %.1f s", time.perf_counter() - t0)
    example = torch.zeros((max_batch, 3, h, w), dtype=torch.uint8, device=device)
    try:
        cache.cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.cache_dir(), prefix=".torch-tensorrt-") as tmp:  # one a call
            saved = os.path.join(tmp, "program.ep")
            torch_tensorrt.save(compiled, saved, inputs=[example])
            with open(saved, "rb") as f:
                cache.store(key, f.read(), ".ep", build_seconds=round(time.perf_counter() - t0, 1), model=info.name)
    except Exception as e:  # the program still runs; it just compiles again next start
        log.warning("could not cache the torch-tensorrt program (%s: %s); it will be recompiled next time",
                    type(e).__name__, str(e)[:200])
    return TorchTensorRTBackend(compiled, info, device, precision, max_batch, key)


def load_backend(name: str, model, info: ModelInfo, device: torch.device, precision: str, max_batch: int,
                 force: bool = False) -> Backend:
    if name == "torch-tensorrt":
        return _torch_tensorrt(model, info, device, precision, max_batch, force)
    plan, key, _ = ensure_engine(model, info, device, precision, max_batch, force)
    try:
        return TensorRTBackend(plan, info, device, precision, max_batch, key)
    except BackendUnavailableError as e:  # verified bytes that this runtime still rejects: rebuild once
        log.warning("%s; rebuilding", e)
        plan, key, _ = ensure_engine(model, info, device, precision, max_batch, force=True)
        return TensorRTBackend(plan, info, device, precision, max_batch, key)

