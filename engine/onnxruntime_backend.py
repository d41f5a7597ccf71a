"""onnxruntime on the CPU (FP32): the checked ONNX export, all graph optimisations on."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.backend import Backend, ModelInfo
from engine.onnx_export import INPUT_NAME, OUTPUT_NAME


def cpu_threads() -> int:
    """Intra-op threads: torch's count (physical cores by default, or as set by torch.set_num_threads)."""
    return max(1, torch.get_num_threads())


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, info: ModelInfo, max_batch: int = 8, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(info, torch.device("cpu"), "fp32", max_batch)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: on a 2-core box the decoder and encoder need those cycles.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.onnx_path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        # numpy() shares the tensor's memory; from_numpy shares the result's: no copies either way
        (labels,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: frames.contiguous().numpy()})
        return torch.from_numpy(labels)
