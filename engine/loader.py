"""``engine.load``: pick and build the fastest correct backend for a checkpoint on this machine.

auto order: TensorRT FP16 (tensorrt importable and CUDA present) -> PyTorch CUDA FP16 -> the faster
of torch-cpu (BF16 on CPUs with native BF16, else FP32) and onnxruntime for this model, size and thread
count (measured once, then cached). Every reduced-precision backend (FP16, BF16) passes a parity gate
against the FP32 model on real CARLA frames or falls back to FP32 loudly. The choice and the reason are
logged on ``segpipe.engine``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from engine import BACKENDS, CPU_BACKENDS, PRECISIONS, cache
from engine.backend import Backend, ModelInfo
from engine.frames import label_agreement, sample_frames
from engine.fused import fused_segmenter
from engine.sizes import parse_size
from train.checkpoint import load_model, resolve_weights
from train.errors import BackendUnavailableError, InvalidInputError
from train.model import border_margin, check_input_size, frame_fits, frame_size_for, nearest_frame, output_size
from train.precision import cpu_has_native_bf16

log = logging.getLogger("segpipe.engine")

PARITY_MIN_AGREEMENT = 0.995  # FP16/BF16 labels vs FP32 labels on the shipped CARLA frames
TRT_INSTALL_HINT = "pip install 'segpipe[trt]' on a machine with an NVIDIA GPU"


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def torch_tensorrt_available() -> bool:
    return importlib.util.find_spec("torch_tensorrt") is not None


def resolve_device(device, backend: str) -> torch.device:
    if device is None or device == "auto":
        cuda = torch.cuda.is_available() and backend not in CPU_BACKENDS
        return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {dev} was asked for but this torch ({torch.__version__}) sees no CUDA GPU: "
                                          f"use --device cpu, or install a CUDA build of torch")
        if backend in CPU_BACKENDS:
            raise InvalidInputError(f"backend {backend} runs on the CPU, not {dev}: drop --device or pick --backend auto")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= (count := torch.cuda.device_count()):
            raise InvalidInputError(f"device {dev} does not exist: this machine has {count} GPU"
                                    f"{'s' if count > 1 else ''} (cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
    elif dev.type != "cpu":
        raise InvalidInputError(f"device {dev} is not supported: use cpu or cuda[:N]")
    return dev


def oriented(size: tuple[int, int], frame_size: tuple[int, int] | None) -> tuple[int, int]:
    """The checkpoint's (H, W) turned to the frames' orientation: portrait frames run at 256x192 rather
    than stretched to 192x256 (same cost, +0.015 mIoU on portrait CARLA crops: BENCHMARKS.md)."""
    if frame_size is None or frame_size[0] == frame_size[1]:
        return size
    h, w = size
    return (w, h) if (h > w) != (frame_size[0] > frame_size[1]) else size


def model_info(weights, ckpt: dict, model, input_size, frame_size=None) -> ModelInfo:
    """``input_size`` is the model's input, or for a valid U-Net the frame size: the engine mirrors the border
    (engine.fused), so it labels the frames it is given, by default at about the checkpoint's input size (objects
    at the scale the model was trained at)."""
    cfg = model.config
    if border_margin(cfg):
        size = parse_size(input_size) or frame_size_for(cfg, *oriented(tuple(ckpt["input_size"]), frame_size))
        check_frame_size(cfg, *size)
        out = size
    else:
        size = parse_size(input_size) or oriented(tuple(ckpt["input_size"]), frame_size)
        check_input_size(cfg, *size)  # raises InvalidInputError naming a size that works
        out = output_size(cfg, *size)
    path = resolve_weights(weights)
    return ModelInfo(name=ckpt["model"], weights=str(path), sha256=cache.file_sha256(path), input_size=size,
                     output_size=out, normalize=dict(ckpt["normalize"]),
                     class_names=list(ckpt["class_names"]),
                     palette=np.asarray(ckpt["palette"], dtype=np.uint8).reshape(-1, 3))


PEAK_SHARE = 0.35   # peak memory / the sum of every layer's output, measured on the CPU (0.31 at 960x1280)


def activation_bytes(model, size: tuple[int, int], batch: int) -> int:
    """About the most memory a forward pass at ``size`` (H, W) takes in FP32: its layers' outputs per input
    pixel, counted on a small input (milliseconds), times the pixels; the buffers live at once are a share."""
    cfg, m = model.config, border_margin(model.config)
    probe = frame_size_for(cfg, 4 * 2 ** cfg.depth, 4 * 2 ** cfg.depth)[0] + 2 * m
    outputs = [0]

    def count(module, inputs, output):
        outputs[0] += output.numel()

    hooks = [mod.register_forward_hook(count) for mod in model.modules() if not any(mod.children())]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, probe, probe))
    finally:
        for hook in hooks:
            hook.remove()
    pixels = batch * (size[0] + 2 * m) * (size[1] + 2 * m)
    return int(PEAK_SHARE * 4 * outputs[0] * pixels / probe ** 2)


def free_memory(dev: torch.device) -> int | None:
    """Bytes that ``dev`` can still give (GPU: free memory; CPU: the kernel's MemAvailable), None if unknown."""
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0] if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(model, size: tuple[int, int], batch: int, dev: torch.device) -> None:
    """Refuse, in one line, a size and batch whose activations would not fit (the OOM killer says nothing)."""
    need, have = activation_bytes(model, size, batch), free_memory(dev)
    if have is None or need <= have:
        return
    gib, where = 2 ** 30, _device_name(dev) if dev.type == "cuda" else "this machine"
    per_frame = need / batch
    if batch > 1 and per_frame <= have:
        fix = f"a batch of {int(have // per_frame)}" + (" or less" if have >= 2 * per_frame else "")
    else:
        step = 2 ** model.config.depth
        scale = (have / per_frame) ** 0.5 * 0.9
        fix = f"--size {max(step, int(size[0] * scale) // step * step)}x{max(step, int(size[1] * scale) // step * step)} or less"
    raise InvalidInputError(f"input {size[0]}x{size[1]} at batch {batch} needs about {need / gib:.1f} GiB for the "
                            f"model's activations and {where} has {have / gib:.1f} GiB free: use {fix}")


def check_frame_size(cfg, height: int, width: int) -> None:
    """Raise a one-line error, naming a size that works, unless a valid U-Net can label frames of this size:
    each side must exceed the border margin (reflect padding mirrors inside the frame) and, padded by it on
    both sides, be an input the model takes."""
    h, w, m = int(height), int(width), border_margin(cfg)
    if frame_fits(cfg, h) and frame_fits(cfg, w):
        return
    why = (f"each side must exceed the {m} pixels mirrored at its border" if min(h, w) <= m else
           f"padded by {m} a side, {h + 2 * m}x{w + 2 * m} is not an input it takes")
    raise InvalidInputError(f"frame size {h}x{w} does not fit an unpadded U-Net of depth {cfg.depth} ({why}): "
                            f"use --size {nearest_frame(cfg, h)}x{nearest_frame(cfg, w)}")


def load(weights=None, backend: str = "auto", precision: str = "fp16", device=None, max_batch: int = 8,
         input_size=None, *, frame_size=None, rebuild: bool = False) -> Backend:
    """Load a checkpoint (the shipped default when ``weights`` is None) as the fastest correct backend.

    ``input_size`` (H, W) or "HxW": the model's input (default: the checkpoint's, turned to portrait when
    ``frame_size``, the (H, W) of the frames it will see, is portrait and the checkpoint landscape); for a
    valid U-Net the size of the frames it labels (default: about the checkpoint's input size; see model_info).
    ``rebuild`` ignores cached artefacts for this key (TensorRT engine, CPU backend race) and makes them anew.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r} (--backend, infer.backend): choose one of "
                                f"{', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}: choose fp16 (reduced precision: FP16 on GPUs, "
                                f"BF16 on CPUs with native BF16) or fp32")
    if int(max_batch) < 1:
        raise InvalidInputError(f"max_batch must be at least 1, not {max_batch}")
    max_batch = int(max_batch)
    if backend in ("tensorrt", "torch-tensorrt"):
        _require_tensorrt(backend)
    model, ckpt = load_model(weights)
    info = model_info(weights, ckpt, model, input_size, frame_size)
    dev = resolve_device(device, backend)
    check_memory(model, info.input_size, max_batch, dev)

    if backend == "auto":
        if dev.type == "cuda":
            if tensorrt_available():
                try:
                    return _announce(_build_gpu("tensorrt", model, info, dev, precision, max_batch, rebuild),
                                     "tensorrt is importable and CUDA is present")
                except Exception as e:  # auto must still give the pipeline a GPU backend; the cause is logged
                    log.warning("TensorRT failed (%s: %s): falling back to PyTorch CUDA", type(e).__name__, e)
                    why = f"TensorRT failed: {e}"
            else:
                why = f"tensorrt is not installed ({TRT_INSTALL_HINT} for the fastest backend)"
            return _announce(_build_gpu("torch-cuda", model, info, dev, precision, max_batch, rebuild), why)
        backend = "cpu"
    if dev.type == "cpu" and backend not in CPU_BACKENDS:
        raise BackendUnavailableError(f"backend {backend} needs a CUDA GPU and none is visible: "
                                      f"use --backend auto (picks the fastest CPU backend)")
    if backend in CPU_BACKENDS:
        cpu_precision = "bf16" if precision == "fp16" and cpu_has_native_bf16() else "fp32"
        if precision == "fp16" and cpu_precision == "fp32":
            log.debug("CPU backends run FP32 here: this CPU has no native BF16 and gains nothing from FP16")
        if backend == "cpu":
            return _announce(*_fastest_cpu(model, info, max_batch, cpu_precision, rebuild))
        return _announce(_build_cpu(backend, model, info, max_batch, cpu_precision),
                         f"--backend {backend} was asked for")
    return _announce(_build_gpu(backend, model, info, dev, precision, max_batch, rebuild),
                     f"--backend {backend} was asked for")


def _announce(backend: Backend, why: str) -> Backend:
    backend.reason = why
    h, w = backend.input_size
    log.info("inference: %s %s on %s at %dx%d, batch 1..%d: %s", backend.name, backend.precision, _device_name(backend.device),
             h, w, backend.max_batch, why)
    return backend


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _require_tensorrt(backend: str) -> None:
    if not tensorrt_available():
        raise BackendUnavailableError(f"--backend {backend} needs TensorRT, which is not installed: {TRT_INSTALL_HINT}")
    if backend == "torch-tensorrt" and not torch_tensorrt_available():
        raise BackendUnavailableError(f"--backend torch-tensorrt needs torch-tensorrt, which is not installed: "
                                      f"{TRT_INSTALL_HINT}, or use --backend tensorrt")


# ---------------------------------------------------------------- CPU

def _build_cpu(name: str, model, info: ModelInfo, max_batch: int, precision: str = "fp32") -> Backend:
    """torch-cpu in ``precision`` (a BF16 one must pass the parity gate), or onnxruntime (always FP32)."""
    if name == "torch-cpu":
        from engine.torch_backend import TorchCPUBackend
        backend = TorchCPUBackend(model, info, max_batch, precision)
        if precision == "fp32":
            return backend
        return _parity_checked(backend, model, info, lambda: TorchCPUBackend(model, info, max_batch))
    from engine.onnx_export import model_onnx
    from engine.onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(model_onnx(model, info), info, max_batch)


def cpu_choice_key(info: ModelInfo, threads: int, batch: int, precision: str = "fp32") -> dict:
    import onnxruntime
    return {"kind": "cpu-choice", "checkpoint_sha256": info.sha256, "input_size": list(info.input_size),
            "threads": threads, "batch": batch, "precision": precision, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def _fastest_cpu(model, info: ModelInfo, max_batch: int, precision: str = "fp32",
                 rebuild: bool = False) -> tuple[Backend, str]:
    """Race torch-cpu (in ``precision``) against onnxruntime once per (model, size, threads, batch, precision,
    versions); cache the verdict."""
    from engine.onnxruntime_backend import cpu_threads
    batch = min(4, max_batch)
    key = cpu_choice_key(info, cpu_threads(), batch, precision)
    hit = cache.lookup(key, ".json")
    if hit.hit and not rebuild:
        verdict = json.loads(hit.path.read_text())
        ms, ran = verdict["ms_per_frame"], verdict.get("torch_cpu_precision", precision)
        why = _race_reason(ms, ran, batch, f"measured {verdict['measured']}, cached")
        return _build_cpu(verdict["winner"], model, info, max_batch, precision), why
    candidates = {name: _build_cpu(name, model, info, max_batch, precision) for name in ("torch-cpu", "onnxruntime")}
    busy = machine_busy()                      # before and after: a job that starts or ends mid-race skews it too
    ms = _race(candidates, sample_frames(info.input_size, batch))
    winner = min(ms, key=ms.get)
    ran = candidates["torch-cpu"].precision  # bf16 asked may have failed its parity gate
    if (busy := busy or machine_busy()) is not None:   # contention skews the race (torch's threads suffer most)
        log.warning("the CPU is busy (%s): the backend choice is not cached and is measured again next "
                    "time (`segpipe build --force` on a quiet machine settles it)", busy)
        return candidates[winner], _race_reason(ms, ran, batch, f"{cpu_threads()} threads; measured now, busy")
    cache.store(key, json.dumps({"winner": winner, "ms_per_frame": ms, "torch_cpu_precision": ran,
                                 "measured": time.strftime("%Y-%m-%d %H:%M")}).encode(), ".json")
    return candidates[winner], _race_reason(ms, ran, batch, f"{cpu_threads()} threads; measured now, cached")


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_busy() -> str | None:
    """Why the machine is too busy for a fair timing (every core in use, by the 1-minute load or by the
    tasks running now: the load average lags a minute behind a job that has just started), or None."""
    cores = cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if load >= cores:
        return f"load average {load:.1f} on {cores} cores"
    others = other_tasks_running()
    return f"{others} other tasks running on {cores} cores" if others is not None and others >= cores else None


def other_tasks_running(samples: int = 5) -> int | None:
    """Tasks running or ready to run besides this one, the fewest of a few looks 10 ms apart (a passing
    process is not a busy machine); None where /proc/loadavg is missing (not Linux)."""
    seen = []
    for i in range(samples):
        try:
            seen.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return None
        if i < samples - 1:
            time.sleep(0.01)
    return min(seen)


def _race_reason(ms: dict, torch_precision: str, batch: int, when: str) -> str:
    return (f"faster on this CPU ({ms['torch-cpu']:.2f} vs {ms['onnxruntime']:.2f} ms/frame for torch-cpu "
            f"{torch_precision} vs onnxruntime at batch {batch}, {when})")


def _race(candidates: dict[str, Backend], frames: torch.Tensor, rounds: int = 5, budget_s: float = 2.0) -> dict[str, float]:
    """Best ms/frame of each backend over the rounds, interleaved so background load hits both alike. The
    best, not the median (as timeit): load only ever adds time, and a spike in one backend's rounds would
    otherwise decide a race the two are not close in (torch-cpu BF16 is ~2x onnxruntime on AMX)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(2):                  # warm-up: oneDNN and onnxruntime settle their kernels in the first calls
        for b in candidates.values():
            b(frames)
    start = time.perf_counter()
    for i in range(rounds):
        for name, b in candidates.items():
            t0 = time.perf_counter()
            b(frames)
            times[name].append((time.perf_counter() - t0) * 1e3 / len(frames))
        if i >= 1 and time.perf_counter() - start > budget_s:
            break
    return {name: round(min(t), 3) for name, t in times.items()}


# ---------------------------------------------------------------- GPU

def _build_gpu(name: str, model, info: ModelInfo, dev: torch.device, precision: str, max_batch: int,
               rebuild: bool = False) -> Backend:
    """Build a GPU backend; an FP16 one must pass the parity gate, else it is rebuilt in FP32 (loudly)."""
    backend = _make_gpu(name, model, info, dev, precision, max_batch, rebuild)
    if precision != "fp16":
        return backend
    return _parity_checked(backend, model, info, lambda: _make_gpu(name, model, info, dev, "fp32", max_batch, rebuild))


def _make_gpu(name: str, model, info: ModelInfo, dev: torch.device, precision: str, max_batch: int,
              rebuild: bool = False) -> Backend:
    if name == "torch-cuda":
        from engine.torch_backend import TorchCUDABackend
        backend = TorchCUDABackend(model, info, dev, precision, max_batch)
        try:
            backend.warmup()
        except torch.OutOfMemoryError:        # the estimate in check_memory was short (another process?)
            backend.release()
            h, w = info.input_size
            raise InvalidInputError(f"the CUDA graphs for batches 1..{max_batch} at {h}x{w} do not fit in the free "
                                    f"memory of {_device_name(dev)}: use a smaller --batch or --size") from None
        return backend
    from engine import tensorrt as trt_engine
    return trt_engine.load_backend(name, model, info, dev, precision, max_batch, force=rebuild)


def _parity_checked(backend: Backend, model, info: ModelInfo, build_fp32) -> Backend:
    """``backend`` (FP16 or BF16) if its labels match FP32 closely enough, else ``build_fp32()``, loudly."""
    agree = precision_agreement(backend, model, info)
    tag = backend.precision.upper()
    if agree >= PARITY_MIN_AGREEMENT:
        log.info("%s parity: %s labels agree with FP32 on %.3f%% of pixels (>= %.1f%% needed)",
                 tag, backend.name, 100 * agree, 100 * PARITY_MIN_AGREEMENT)
        return backend
    log.warning("%s PARITY FAILED: %s %s labels agree with FP32 on only %.3f%% of pixels (< %.1f%%): "
                "falling back to FP32, which is slower", tag, backend.name, tag, 100 * agree, 100 * PARITY_MIN_AGREEMENT)
    backend.release()
    return build_fp32()


def precision_agreement(backend: Backend, model, info: ModelInfo) -> float:
    """Label agreement of ``backend`` with the unfused FP32 PyTorch model on the shipped CARLA frames."""
    n = min(4, backend.max_batch)
    frames = sample_frames(info.input_size, n).to(backend.device)
    reference = fused_segmenter(model, info.normalize, fold_bn=False).to(backend.device)
    with torch.inference_mode():
        want = reference(frames)
    return label_agreement(backend(frames), want)
