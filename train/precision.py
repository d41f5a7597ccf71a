"""Which reduced precision a device runs fast: FP16 on CUDA GPUs, BF16 on CPUs with native BF16 units."""
from __future__ import annotations

import torch

from train.errors import InvalidInputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 (Zen 4, Cooper Lake) or AMX (Sapphire Rapids): BF16 convs run about twice as fast as FP32.

    Elsewhere PyTorch emulates BF16, slower than FP32, so the engine keeps FP32 there."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The training autocast dtype for ``precision`` on ``device``; None means plain FP32.

    ``auto`` is FP16 mixed precision on CUDA and FP32 on the CPU: BF16 trains about twice as fast on a CPU
    with native BF16, but is opt-in because our one comparison ended 0.015 mIoU lower (BENCHMARKS.md)."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise InvalidInputError("precision fp16 needs a CUDA GPU: use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
