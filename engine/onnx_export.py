"""ONNX export of the fused segmenter, always checked (onnx.checker, then onnxruntime vs PyTorch).

The graph takes ``frames``: uint8 (batch, 3, H, W) RGB and returns ``labels``: uint8 (batch, H, W);
the batch axis is dynamic. Normalisation and argmax are inside the graph.

Tolerance (stated, and enforced by ``check_export``): on the shipped CARLA frames, at batch 1 and
batch 4, onnxruntime's labels must agree with PyTorch FP32 on >= 99.9% of pixels, and the logits of the
same graph (exported alongside, in memory) must match PyTorch within max |diff| <= 1e-3.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from engine import cache
from engine.backend import ModelInfo
from engine.fused import FusedSegmenter, fused_segmenter
from engine.frames import label_agreement, sample_frames
from train.errors import ExportError, InvalidInputError

log = logging.getLogger("segpipe.engine")

OPSET = 17
# The code that makes the graph: a change to it (normalisation, argmax, padding) exports anew, and so
# rebuilds the engines keyed by the export's hash.
GRAPH_CODE = hashlib.sha256(b"".join(Path(__file__).with_name(name).read_bytes()
                                     for name in ("fused.py", "onnx_export.py"))).hexdigest()[:16]
LABEL_AGREEMENT_MIN = 0.999   # onnxruntime labels vs PyTorch FP32 labels
LOGITS_MAX_ABS_DIFF = 1e-3    # onnxruntime logits vs PyTorch FP32 logits
INPUT_NAME, OUTPUT_NAME = "frames", "labels"


class _Logits(torch.nn.Module):
    def __init__(self, net: FusedSegmenter):
        super().__init__()
        self.net = net

    def forward(self, frames):
        return self.net.logits(frames)


@dataclass
class ExportReport:
    path: Path
    sha256: str
    label_agreement: float
    logits_max_abs_diff: float
    seconds: float

    def summary(self) -> str:
        return (f"labels agree with PyTorch on {self.label_agreement:.4%} of pixels (>= {LABEL_AGREEMENT_MIN:.1%} needed), "
                f"logits max |diff| {self.logits_max_abs_diff:.2e} (<= {LOGITS_MAX_ABS_DIFF:g})")


def to_onnx_bytes(module: torch.nn.Module, size: tuple[int, int], output_name: str = OUTPUT_NAME) -> bytes:
    """Trace ``module`` (uint8 frames in) to ONNX with a dynamic batch axis."""
    h, w = size
    dummy = torch.zeros(2, 3, h, w, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; onnxscript is not a dependency
        torch.onnx.export(module.eval(), (dummy,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[output_name],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}})
    return buf.getvalue()


def export_onnx(net: FusedSegmenter, size: tuple[int, int], path: str | Path, *, check: bool = True) -> ExportReport:
    """Export ``net`` to ``path`` (written atomically) and check it; raises ExportError if out of tolerance."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise InvalidInputError(f"ONNX file {path} should end in .onnx: use e.g. --onnx {path.with_suffix('.onnx')}")
    t0 = time.perf_counter()
    data = to_onnx_bytes(net, size)
    agree, diff = check_export(net, data, size) if check else (float("nan"), float("nan"))
    path.parent.mkdir(parents=True, exist_ok=True)
    cache._atomic_write(path, data)
    return ExportReport(path, cache.file_sha256(path), agree, diff, time.perf_counter() - t0)


def check_export(net: FusedSegmenter, data: bytes, size: tuple[int, int]) -> tuple[float, float]:
    """onnx.checker, then labels and logits through onnxruntime vs PyTorch on real frames at two batch sizes."""
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    logits_data = to_onnx_bytes(_Logits(net), size, output_name="logits")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    labels_sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    logits_sess = ort.InferenceSession(logits_data, opts, providers=["CPUExecutionProvider"])
    agree, diff = 1.0, 0.0
    for n in (1, 4):
        frames = sample_frames(size, n)
        with torch.inference_mode():
            ref_logits = net.logits(frames)
            ref_labels = ref_logits.argmax(1).to(torch.uint8)
        (labels,) = labels_sess.run(None, {INPUT_NAME: frames.numpy()})
        (logits,) = logits_sess.run(None, {INPUT_NAME: frames.numpy()})
        if labels.shape != tuple(ref_labels.shape) or labels.dtype.name != "uint8":
            raise ExportError(f"exported graph returns {labels.dtype}{labels.shape} for batch {n}, "
                                   f"expected uint8{tuple(ref_labels.shape)}: report this as a bug")
        agree = min(agree, label_agreement(torch.from_numpy(labels), ref_labels))
        diff = max(diff, (torch.from_numpy(logits) - ref_logits).abs().max().item())
    if agree < LABEL_AGREEMENT_MIN or diff > LOGITS_MAX_ABS_DIFF:
        raise ExportError(f"ONNX export does not match PyTorch: labels agree on {agree:.4%} "
                               f"(>= {LABEL_AGREEMENT_MIN:.1%} needed), logits max |diff| {diff:.2e} "
                               f"(<= {LOGITS_MAX_ABS_DIFF:g} needed); try another onnxruntime/torch version")
    return agree, diff


def cached_onnx(net: FusedSegmenter, checkpoint_sha256: str, size: tuple[int, int]) -> Path:
    """The checked ONNX export of this checkpoint at this size, from the cache or exported now."""
    key = {"kind": "onnx", "checkpoint_sha256": checkpoint_sha256, "input_size": [int(size[0]), int(size[1])],
           "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__, "graph_code": GRAPH_CODE}
    if getattr(net, "margin", 0):  # a valid model's unpadded exports had this key; same padding's key is unchanged
        key["reflect_pad"] = net.margin
    hit = cache.lookup(key, ".onnx")
    if hit.hit:
        return hit.path
    log.info("exporting ONNX for %dx%d (%s)", size[0], size[1], hit.reason)
    t0 = time.perf_counter()
    data = to_onnx_bytes(net, size)
    agree, diff = check_export(net, data, size)
    return cache.store(key, data, ".onnx", label_agreement=agree, logits_max_abs_diff=diff,
                       build_seconds=round(time.perf_counter() - t0, 2))


def model_onnx(model: torch.nn.Module, info: ModelInfo) -> Path:
    """``cached_onnx`` of ``model`` fused with its normalisation, at the size ``info`` runs."""
    return cached_onnx(fused_segmenter(model, info.normalize), info.sha256, info.input_size)
