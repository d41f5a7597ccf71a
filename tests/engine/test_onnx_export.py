"""ONNX export: uint8 in, uint8 labels out, dynamic batch, checked against PyTorch through onnxruntime."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.frames import label_agreement, sample_frames
from engine.fused import fused_segmenter
from engine.onnx_export import LABEL_AGREEMENT_MIN, cached_onnx, export_onnx
from pipeline.cli import main
from train.checkpoint import load_model
from train.errors import InvalidInputError

TINY_SIZE = (96, 128)  # as the tiny_ckpt fixture


@pytest.fixture(scope="module")
def tiny_export(tiny_ckpt, tmp_path_factory):
    model, ckpt = load_model(tiny_ckpt)
    net = fused_segmenter(model, ckpt["normalize"])
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return net, export_onnx(net, TINY_SIZE, path)


def test_graph_signature(tiny_export):
    _, report = tiny_export
    graph = onnx.load(report.path).graph
    onnx.checker.check_model(onnx.load(report.path))
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "frames" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.name == "labels" and out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", 3, *TINY_SIZE] and out_dims == ["batch", *TINY_SIZE]


def test_labels_are_cast_to_uint8_from_a_float(tiny_export):
    """TensorRT documents uint8 casts from float32/float16 only, so ArgMax's int64 goes through float32."""
    _, report = tiny_export
    model = onnx.shape_inference.infer_shapes(onnx.load(report.path))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    to_uint8 = [n for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.UINT8]
    assert to_uint8 and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in to_uint8)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_pytorch(tiny_export, batch):
    net, report = tiny_export
    assert report.label_agreement >= LABEL_AGREEMENT_MIN and report.logits_max_abs_diff <= 1e-3
    frames = sample_frames(TINY_SIZE, batch)
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (labels,) = sess.run(None, {"frames": frames.numpy()})
    assert labels.dtype == np.uint8 and labels.shape == (batch, *TINY_SIZE)
    with torch.inference_mode():
        want = net(frames)
    assert label_agreement(torch.from_numpy(labels), want) >= LABEL_AGREEMENT_MIN


def test_export_refuses_a_wrong_suffix(tiny_export, tmp_path):
    net, _ = tiny_export
    with pytest.raises(InvalidInputError, match=r"should end in \.onnx"):
        export_onnx(net, TINY_SIZE, tmp_path / "model.pt")


def test_cached_onnx_is_reused(tiny_ckpt):
    model, ckpt = load_model(tiny_ckpt)
    net = fused_segmenter(model, ckpt["normalize"])
    first = cached_onnx(net, "f" * 64, TINY_SIZE)
    mtime = first.stat().st_mtime_ns
    assert cached_onnx(net, "f" * 64, TINY_SIZE) == first and first.stat().st_mtime_ns == mtime


def test_cli_export_writes_settings(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--onnx", str(out), "--weights", str(tiny_ckpt), "--size", "64x96"]) == 0
    settings = json.loads((tmp_path / "m.onnx.json").read_text())
    assert settings["input_size"] == [64, 96] and settings["input"]["dtype"] == "uint8"
    assert settings["check"]["label_agreement"] >= settings["check"]["label_agreement_min"]
    assert "onnx.checker ok" in capsys.readouterr().out


def test_cli_export_bad_size_is_one_line(tiny_ckpt, tmp_path, capsys):
    assert main(["export", "--onnx", str(tmp_path / "m.onnx"), "--weights", str(tiny_ckpt), "--size", "100x128"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "segpipe export: error: input 100x128 is not divisible by 16 (depth 4): use --size 96x128"
