"""How the shipped weights score on the validation frames when the input is another size or shape.

    python benchmarks/input_shape.py --data ../shared/carla --video ../shared/videos/carla_drive_720p.mp4

Three questions, each scored at the input's own size (pixel accuracy / mIoU, as `segpipe eval --native`):
- larger model inputs (and horizontal-flip averaging) on the 640x480 frames;
- a 16:9 input (the 720p clip: each frame scaled 2x, top and bottom cropped): stretched to the model's
  4:3, a model input of its own shape, or letterboxed (grey bars, their labels cropped off after);
- a portrait 3:4 input (a 360x480 centre crop of each frame): stretched, or its own shape.
The numbers go to BENCHMARKS.md; not part of the test suite (a few CPU-minutes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from engine.fused import fused_segmenter
from train.checkpoint import load_model
from train.data import read_image, read_mask
from train.evaluate import checkpoint_split
from train.metrics import ConfusionMatrix

GREY = (124, 116, 104)          # the normalisation mean: zero after normalising


@torch.inference_mode()
def labels(net, image: np.ndarray, size: tuple[int, int], fit: str = "stretch", flip: bool = False) -> np.ndarray:
    """Labels at ``image``'s size from a model input of ``size`` (H, W), stretched or letterboxed."""
    h, w = size
    H, W = image.shape[:2]
    top, rows = 0, h
    if fit == "stretch":
        x = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    else:
        rows = round(H * w / W)
        top = (h - rows) // 2
        x = np.empty((h, w, 3), np.uint8)
        x[:] = GREY
        x[top:top + rows] = cv2.resize(image, (w, rows), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
    logits = net.logits(x)
    if flip:
        logits = logits + net.logits(x.flip(-1)).flip(-1)
    pred = logits.argmax(1)[0].to(torch.uint8).numpy()[top:top + rows]
    return cv2.resize(pred, (W, H), interpolation=cv2.INTER_NEAREST_EXACT)


def score(rows: dict[str, ConfusionMatrix]) -> None:
    for name, cm in rows.items():
        print(f"  {name:44s} {cm.pixel_accuracy():.3f} / {cm.miou():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/carla")
    ap.add_argument("--video", default="../shared/videos/carla_drive_720p.mp4")
    ap.add_argument("--weights", help="checkpoint (default: the shipped model)")
    args = ap.parse_args()
    model, ckpt = load_model(args.weights)
    net = fused_segmenter(model, ckpt["normalize"])
    pairs = checkpoint_split(args.data, ckpt, "val")
    base = tuple(ckpt["input_size"])

    sizes = {f"{base[0]}x{base[1]}": (base, False), f"{base[0]}x{base[1]} + flip": (base, True),
             "192x256": ((192, 256), False), "240x320": ((240, 320), False)}
    portrait = {"stretched to 144x192": ((144, 192), "stretch"), "own shape 192x144": ((192, 144), "stretch"),
                "own shape, same scale 144x112": ((144, 112), "stretch")}
    cms = {k: ConfusionMatrix(23) for k in [*sizes, *portrait]}
    for p in pairs:
        image, truth = read_image(p.image), torch.from_numpy(read_mask(p.mask))
        for name, (size, flip) in sizes.items():
            cms[name].update(torch.from_numpy(labels(net, image, size, flip=flip)), truth)
        for name, (size, fit) in portrait.items():
            cms[name].update(torch.from_numpy(labels(net, image[:, 140:500], size, fit)), truth[:, 140:500])
    print(f"{len(pairs)} validation frames, pixel accuracy / mIoU at 640x480:")
    score({k: cms[k] for k in sizes})
    print("portrait 3:4 (360x480 centre crops):")
    score({k: cms[k] for k in portrait})

    wide = {"stretched to 144x192": ((144, 192), "stretch"), "own shape 112x192": ((112, 192), "stretch"),
            "letterboxed in 112x192": ((112, 192), "pad"), "letterboxed in 144x192": ((144, 192), "pad")}
    cms = {k: ConfusionMatrix(23) for k in wide}
    names = sorted(p.name for p in (Path(args.data) / "CameraRGB").iterdir())
    wanted = {names.index(p.image.name): p for p in pairs}
    with av.open(args.video) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i not in wanted:
                continue
            image = frame.to_ndarray(format="rgb24")
            H, W = image.shape[:2]
            truth = read_mask(wanted[i].mask)                # the same crop of the mask: scale, then centre
            scale = W / truth.shape[1]
            truth = cv2.resize(truth, (W, round(truth.shape[0] * scale)), interpolation=cv2.INTER_NEAREST_EXACT)
            top = (truth.shape[0] - H) // 2
            truth = torch.from_numpy(np.ascontiguousarray(truth[top:top + H]))
            for name, (size, fit) in wide.items():
                cms[name].update(torch.from_numpy(labels(net, image, size, fit)), truth)
    print(f"16:9 ({args.video}):")
    score(cms)


if __name__ == "__main__":
    main()
