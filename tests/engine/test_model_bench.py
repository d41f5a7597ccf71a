"""model_bench rows and model_cost numbers, on the CPU with the tiny checkpoint."""
import pytest

from engine import bench
from engine.bench import format_cost, format_rows, model_bench, model_cost, roofline_ms
from train.model import create_model


def test_model_cost_counts_macs_by_hand():
    model = create_model("unet_tiny").eval()  # base 8, depth 4, batch norm
    cost = model_cost(model, (32, 32))
    # hand count at 32x32: encoder convs, transposed convs, decoder convs, 1x1 head
    enc = [(3, 8, 32), (8, 8, 32), (8, 16, 16), (16, 16, 16), (16, 32, 8), (32, 32, 8), (32, 64, 4), (64, 64, 4),
           (64, 128, 2), (128, 128, 2)]
    dec = [(128, 64, 4), (64, 64, 4), (64, 32, 8), (32, 32, 8), (32, 16, 16), (16, 16, 16), (16, 8, 32), (8, 8, 32)]
    macs = sum(cin * cout * 9 * s * s for cin, cout, s in enc + dec)
    macs += sum(cin * cout * 4 * (s // 2) ** 2 for cin, cout, s in [(128, 64, 4), (64, 32, 8), (32, 16, 16), (16, 8, 32)])
    macs += 8 * 23 * 32 * 32
    assert cost["macs"] == macs
    assert cost["gflops"] == pytest.approx(2 * macs / 1e9)
    assert cost["bytes_fp16"] < cost["bytes_fp32"] and cost["intensity_fp16"] > cost["intensity_fp32"]
    assert roofline_ms(cost, peak_tflops=1.0, peak_gb_s=1.0) > 0
    assert "GMACs" in format_cost(cost)


def test_model_bench_rows(tiny_ckpt, monkeypatch):
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: False)  # a CPU without BF16: FP32 rows only
    rows = model_bench(tiny_ckpt, backends=["torch-cpu", "onnxruntime"], batches=(1, 2), iters=2, warmup=1)
    assert [(r["backend"], r["batch"]) for r in rows] == [("torch-cpu", 1), ("torch-cpu", 2),
                                                         ("onnxruntime", 1), ("onnxruntime", 2)]
    for r in rows:
        assert {"backend", "precision", "batch", "fps", "latency_ms", "device"} <= set(r)
        assert r["precision"] == "fp32" and r["fps"] > 0 and r["latency_ms"] > 0 and r["device"].startswith("cpu")
        assert r["fps"] == pytest.approx(r["batch"] * 1e3 / r["latency_ms"])
    table = format_rows(rows)
    assert "onnxruntime" in table and "median ms" in table


def test_model_bench_skips_unavailable_backends(tiny_ckpt):
    assert model_bench(tiny_ckpt, backends=["tensorrt"], batches=(1,), iters=1, warmup=0) == []
    assert format_rows([]) == "no backend could run here"


def test_model_bench_rows_on_a_bf16_cpu(tiny_ckpt, monkeypatch):
    """On CPUs with native BF16 the default plan adds torch-cpu BF16 rows; onnxruntime stays FP32."""
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("engine.loader.cpu_has_native_bf16", lambda: True)
    rows = model_bench(tiny_ckpt, backends=["torch-cpu", "onnxruntime"], batches=(1,), iters=2, warmup=1)
    assert [(r["backend"], r["precision"]) for r in rows] == [("torch-cpu", "bf16"), ("torch-cpu", "fp32"),
                                                             ("onnxruntime", "fp32")]
