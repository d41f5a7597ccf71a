"""Model-only benchmarks of each backend, and the model's cost for a roofline.

``model_bench`` times ``backend(frames)`` (uint8 frames already on the device, labels left there):
warm-up calls are excluded, latency is the median of per-call times (CUDA events on a GPU,
perf_counter on the CPU), fps = batch / median latency.
"""
from __future__ import annotations

import logging
import statistics
import time

import torch
from torch import nn

from engine import CPU_BACKENDS, PRECISIONS
from engine.frames import sample_frames
from train.errors import BackendUnavailableError
from train.model import border_margin
from train.precision import cpu_has_native_bf16

log = logging.getLogger("segpipe.engine")


def model_cost(model: nn.Module, size: tuple[int, int], batch: int = 1) -> dict:
    """MACs and memory traffic of one forward pass at ``size`` (H, W), counted with forward hooks.

    MACs: every Conv2d (output elements x in_channels/groups x kernel area) and ConvTranspose2d
    (input elements x out_channels/groups x kernel area). Bytes: the weights once, plus each conv,
    transposed conv and pool reading its input and writing its output once (BatchNorm folded,
    ReLU fused, concatenation free: what a fusing engine achieves), plus uint8 frames in and labels out.
    ``intensity`` = FLOPs / byte; compare with the device's peak FLOPs / bandwidth for the roofline.
    """
    h, w = size
    m = border_margin(model.config) if hasattr(model, "config") else 0    # a valid U-Net sees the frame mirrored
    counts = {"macs": 0, "act_elems": 0}

    def conv_hook(mod, inputs, output):
        x = inputs[0]
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, nn.ConvTranspose2d):
            counts["macs"] += x.numel() * (mod.out_channels // mod.groups) * k
        else:
            counts["macs"] += output.numel() * (mod.in_channels // mod.groups) * k
        counts["act_elems"] += x.numel() + output.numel()

    def pool_hook(mod, inputs, output):
        counts["act_elems"] += inputs[0].numel() + output.numel()

    handles = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            handles.append(mod.register_forward_hook(pool_hook))
    try:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = model(torch.zeros(batch, 3, h + 2 * m, w + 2 * m, device=next(model.parameters()).device))
        model.train(was_training)
    finally:
        for hd in handles:
            hd.remove()
    params = sum(p.numel() for p in model.parameters())
    io_bytes = batch * 3 * h * w + batch * out.shape[-2] * out.shape[-1]  # uint8 frames in, uint8 labels out
    cost = {"input_size": f"{h}x{w}", "batch": batch, "macs": counts["macs"], "gflops": 2 * counts["macs"] / 1e9,
            "params": params}
    for name, nbytes in (("fp32", 4), ("fp16", 2)):
        weights, acts = params * nbytes, counts["act_elems"] * nbytes
        total = weights + acts + io_bytes
        cost[f"bytes_{name}"] = total
        cost[f"weight_bytes_{name}"] = weights
        cost[f"activation_bytes_{name}"] = acts
        cost[f"intensity_{name}"] = 2 * counts["macs"] / total  # FLOPs per byte
    return cost


def roofline_ms(cost: dict, peak_tflops: float, peak_gb_s: float, precision: str = "fp16") -> float:
    """Lower bound on latency for one pass: the slower of compute at peak and memory traffic at peak bandwidth."""
    return 1e3 * max(2 * cost["macs"] / (peak_tflops * 1e12), cost[f"bytes_{precision}"] / (peak_gb_s * 1e9))


def _default_plan(backends, precisions) -> list[tuple[str, str]]:
    from engine.loader import tensorrt_available
    if backends is None:
        if torch.cuda.is_available():
            backends = (["tensorrt"] if tensorrt_available() else []) + ["torch-cuda"]
        else:
            backends = ["torch-cpu", "onnxruntime"]
    plan = []
    for b in backends:
        # GPUs run FP16; on the CPU "fp16" means torch-cpu BF16, worth a row only where BF16 is native
        reduced = b not in CPU_BACKENDS or (b in ("torch-cpu", "cpu") and cpu_has_native_bf16())
        for p in precisions or PRECISIONS:
            if p == "fp32" or reduced:
                plan.append((b, p))
    return plan


def _time_calls(backend, frames: torch.Tensor, iters: int, warmup: int) -> list[float]:
    """Per-call milliseconds, warm-up excluded."""
    for _ in range(warmup):
        backend(frames)
    if backend.device.type == "cuda":
        stream = torch.cuda.current_stream(backend.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        torch.cuda.synchronize(backend.device)
        for start, end in events:
            start.record(stream)
            backend(frames)
            end.record(stream)
        torch.cuda.synchronize(backend.device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        backend(frames)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _load(weights, name: str, precision: str, max_batch: int, size):
    """engine.load, plus "torch-cuda-compile": the torch-cuda backend with torch.compile (inductor) under its
    CUDA graphs, to compare with the default eager-kernels-in-CUDA-graphs (compiles once per batch size: slow)."""
    import engine
    if name != "torch-cuda-compile":
        return engine.load(weights, backend=name, precision=precision, max_batch=max_batch, input_size=size)
    if not torch.cuda.is_available():
        raise BackendUnavailableError("torch-cuda-compile needs a CUDA GPU")
    from engine.loader import model_info
    from engine.torch_backend import TorchCUDABackend
    from train.checkpoint import load_model
    model, ckpt = load_model(weights)
    b = TorchCUDABackend(model, model_info(weights, ckpt, model, size), torch.device("cuda", torch.cuda.current_device()),
                         precision, max_batch, mode="compile")
    b.name = "torch-cuda-compile"
    return b


def model_bench(weights=None, backends=None, precisions=None, batches=(1, 4, 8), size=None,
                iters: int | None = None, warmup: int | None = None) -> list[dict]:
    """One row per backend x precision x batch: backend, precision (what actually ran), batch, fps,
    latency_ms (median), p90_ms, device, input_size, plus the model's MACs and achieved GFLOP/s.
    Backends that cannot run here are skipped with a warning. Besides engine.BACKENDS, ``backends`` may name
    "torch-cuda-compile" (torch.compile inside the CUDA graphs) to compare with "torch-cuda"."""
    from train.checkpoint import load_model

    batches = sorted({int(b) for b in batches})
    rows = []
    model, _ = load_model(weights)
    for name, precision in _default_plan(backends, precisions):
        try:
            b = _load(weights, name, precision, max(batches), size)
        except BackendUnavailableError as e:
            log.warning("bench: skipping %s %s: %s", name, precision, e)
            continue
        gpu = b.device.type == "cuda"
        n_iter = iters or (200 if gpu else 20)
        n_warm = warmup if warmup is not None else (20 if gpu else 3)
        cost = model_cost(model, b.input_size)
        device = torch.cuda.get_device_name(b.device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
        for n in batches:
            frames = sample_frames(b.input_size, n).to(b.device)
            times = _time_calls(b, frames, n_iter, n_warm)
            median = statistics.median(times)
            p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
            rows.append({"backend": b.name, "precision": b.precision, "batch": n, "fps": n * 1e3 / median,
                         "latency_ms": median, "p90_ms": p90, "device": device,
                         "input_size": f"{b.input_size[0]}x{b.input_size[1]}", "iters": n_iter,
                         "macs_per_frame": cost["macs"], "gflop_s": 2 * cost["macs"] * n / (median * 1e6)})
        del b
    return rows


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of ``model_bench`` rows."""
    if not rows:
        return "no backend could run here"
    head = f"{'backend':<15} {'prec':<5} {'size':>8} {'batch':>5} {'fps':>9} {'median ms':>10} {'p90 ms':>8} {'GFLOP/s':>8}  device"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backend']:<15} {r['precision']:<5} {r.get('input_size', ''):>8} {r['batch']:>5} "
                     f"{r['fps']:>9.1f} {r['latency_ms']:>10.2f} {r.get('p90_ms', float('nan')):>8.2f} "
                     f"{r.get('gflop_s', float('nan')):>8.1f}  {r['device']}")
    return "\n".join(lines)


def format_cost(cost: dict) -> str:
    return (f"{cost['input_size']}: {cost['macs'] / 1e9:.3f} GMACs ({cost['gflops']:.3f} GFLOPs), "
            f"{cost['params'] / 1e6:.2f} M params; traffic {cost['bytes_fp32'] / 1e6:.1f} MB fp32 / "
            f"{cost['bytes_fp16'] / 1e6:.1f} MB fp16 (weights {cost['weight_bytes_fp32'] / 1e6:.2f} MB fp32); "
            f"intensity {cost['intensity_fp32']:.1f} / {cost['intensity_fp16']:.1f} FLOP/byte")
