"""Valid (unpadded) U-Nets in the engine, the pipeline and eval: the input is mirrored at the border, as in
the paper's overlap-tile scheme, so the labels cover exactly the frame the model is given."""
import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import engine
from engine.frames import label_agreement, sample_frames
from engine.fused import fused_segmenter
from engine.onnx_export import to_onnx_bytes
from pipeline.cli import main
from train.checkpoint import load_model, make_checkpoint, save_checkpoint
from train.data import read_mask
from train.errors import InvalidInputError
from train.evaluate import evaluate_checkpoint
from train.metrics import ConfusionMatrix
from train.model import MODEL_CONFIGS, border_margin, create_model, output_size

VALID_SIZE = (284, 316)   # the checkpoint's input: depth 4 gives 100x132 labels, just over the 92-pixel border
OUT_SIZE = (100, 132)      # the centre it labels of such an input (what training and eval score)
FRAME_SIZE = (276, 308)    # the frames it labels by default: the nearest size that, mirrored by 92 a side, is an
                           # input (so frames resized to it show objects at the training scale)


@pytest.fixture(scope="module")
def valid_ckpt(tmp_path_factory):
    """A random-weight unet_tiny with valid padding (depth 4) at 284x316, whose labels vary over the frame."""
    torch.manual_seed(0)
    model = create_model("unet_tiny", padding="valid").eval()
    with torch.no_grad():   # else one class wins everywhere and any misalignment goes unseen
        model.head.weight.sub_(model.head.weight.mean(1, keepdim=True))
        model.head.bias.zero_()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_valid.pt"
    save_checkpoint(make_checkpoint(model, "unet_tiny", VALID_SIZE), path)
    return path


def reference_labels(weights, frames: torch.Tensor) -> torch.Tensor:
    """Reflect-pad the normalised frames by the border margin, run the unfused model, argmax."""
    model, ckpt = load_model(weights)
    mean = torch.tensor(ckpt["normalize"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["normalize"]["std"]).view(1, 3, 1, 1)
    m = border_margin(model.config)
    with torch.inference_mode():
        x = F.pad((frames.float() / 255 - mean) / std, (m, m, m, m), mode="reflect")
        return model.eval()(x).argmax(1).to(torch.uint8)


def test_border_margin_is_what_a_valid_unet_loses():
    paper = MODEL_CONFIGS["unet_paper"]
    assert border_margin(paper) == 92 and output_size(paper, 572, 572) == (388, 388)
    assert border_margin(MODEL_CONFIGS["unet_carla"]) == 0
    # same padding: FusedSegmenter adds no op, so the graph (and its ONNX cache key) is as before
    net = fused_segmenter(create_model("unet_tiny"), {"mean": [0.5] * 3, "std": [0.25] * 3})
    assert net.margin == 0
    assert "Pad" not in {n.op_type for n in onnx.load_from_string(to_onnx_bytes(net, (32, 32))).graph.node}


@pytest.mark.parametrize("backend", ["torch-cpu", "onnxruntime"])
def test_cpu_backends_label_the_whole_frame(valid_ckpt, backend):
    b = engine.load(valid_ckpt, backend=backend, precision="fp32", max_batch=4)
    assert b.input_size == b.output_size == FRAME_SIZE      # by default
    frames = sample_frames(FRAME_SIZE, 3)
    labels = b(frames)
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == (3, *FRAME_SIZE)
    assert label_agreement(labels, reference_labels(valid_ckpt, frames)) >= 0.999
    if backend == "onnxruntime":   # standard ONNX: a Pad in reflect mode (TensorRT takes it too)
        pads = [n for n in onnx.load(b.onnx_path).graph.node if n.op_type == "Pad"]
        assert [a.s for n in pads for a in n.attribute if a.name == "mode"] == [b"reflect"]


def test_size_names_the_frame_size(valid_ckpt):
    b = engine.load(valid_ckpt, backend="onnxruntime", precision="fp32", max_batch=2, input_size="116x148")
    assert b.input_size == b.output_size == (116, 148)
    frames = sample_frames((116, 148), 2)
    assert tuple(b(frames).shape) == (2, 116, 148)
    assert label_agreement(b(frames), reference_labels(valid_ckpt, frames)) >= 0.999


@pytest.mark.parametrize("size, works", [("240x320", "244x324"), ("80x132", "100x132")])
def test_a_bad_size_is_one_line_naming_one_that_works(valid_ckpt, size, works):
    with pytest.raises(InvalidInputError) as e:
        engine.load(valid_ckpt, backend="torch-cpu", precision="fp32", input_size=size)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"frame size {size} does not fit an unpadded U-Net of depth 4")
    assert msg.endswith(f"use --size {works}")
    assert engine.load(valid_ckpt, backend="torch-cpu", precision="fp32", input_size=works).input_size == \
        tuple(int(v) for v in works.split("x"))


def test_run_writes_masks_of_the_frames_size_scored_as_eval_native(valid_ckpt, carla_dir, tmp_path):
    masks = tmp_path / "masks"
    assert main(["run", str(carla_dir / "CameraRGB"), "--masks", str(masks), "--weights", str(valid_ckpt),
                 "--backend", "torch-cpu", "--precision", "fp32", "--no-progress"]) == 0
    written = sorted(masks.glob("*.png"))
    assert len(written) == 12
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (240, 320) for p in written)
    # aligned with the frame (not the centre's labels stretched over it): as the pipeline scales the frame
    # to 276x308 and the labels back
    frame = cv2.cvtColor(cv2.imread(str(sorted((carla_dir / "CameraRGB").iterdir())[0])), cv2.COLOR_BGR2RGB)
    small = torch.from_numpy(cv2.resize(frame, FRAME_SIZE[::-1], interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
    want = cv2.resize(reference_labels(valid_ckpt, small[None])[0].numpy(), (320, 240),
                      interpolation=cv2.INTER_NEAREST_EXACT)
    assert (cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED) == want).mean() >= 0.99

    native = evaluate_checkpoint(carla_dir, valid_ckpt, split="all", device="cpu", native=True)
    assert native["scored_at"] == "native" and native["frames"] == 12
    cm = ConfusionMatrix(23)
    for p, truth in zip(written, sorted((carla_dir / "CameraMask").iterdir())):
        cm.update(torch.from_numpy(read_mask(p)), torch.from_numpy(read_mask(truth)))
    assert abs(cm.pixel_accuracy() - native["pixel_accuracy"]) < 0.002 and abs(cm.miou() - native["miou"]) < 0.01


@pytest.mark.parametrize("native", [False, True])
def test_eval_and_its_grid(valid_ckpt, carla_dir, tmp_path, native):
    grid = tmp_path / "grid.png"
    result = evaluate_checkpoint(carla_dir, valid_ckpt, split="all", device="cpu", grid=str(grid), native=native)
    assert result["frames"] == 12 and result["scored_at"] == ("native" if native else "284x316")
    assert 0 <= result["pixel_accuracy"] <= 1
    # rows of input | ground truth | prediction, each the centre the prediction covers
    assert cv2.imread(str(grid)).shape == (4 * OUT_SIZE[0], 3 * OUT_SIZE[1], 3)
    assert np.isfinite(result["miou"])


def test_model_cost_runs_a_valid_model_on_the_mirrored_frame():
    from engine.bench import model_cost
    from train.model import create_model

    same, valid = create_model("unet_tiny"), create_model("unet_tiny", padding="valid")
    assert model_cost(valid, (100, 132))["macs"] > 2 * model_cost(same, (96, 128))["macs"]   # it runs 284x316
