"""Validation accuracy of every backend and precision this machine runs: what the deployed engine scores,
not only the training-time FP32 model.

    python benchmarks/precision_parity.py --data ../shared/carla
    python benchmarks/precision_parity.py --data ../shared/carla --weights runs/x/best.pt --json parity.json

Each row runs the checkpoint's validation runs (the split it was trained with) at its input size through
``engine.load`` and reports pixel accuracy, mIoU and the share of pixels whose label matches the first row
(PyTorch FP32). Rows whose precision fell back (no native BF16 here, or a failed parity gate) say what ran.
"""
from __future__ import annotations

import argparse
import json
import logging

import torch

import engine
from train.checkpoint import load_checkpoint
from train.data import FrameSet
from train.evaluate import checkpoint_split
from train.metrics import ConfusionMatrix


def plan() -> list[tuple[str, str]]:
    rows = [("torch-cpu", "fp32"), ("torch-cpu", "fp16"), ("onnxruntime", "fp32")]
    if torch.cuda.is_available():
        rows += [("torch-cuda", "fp32"), ("torch-cuda", "fp16")]
        if engine.loader.tensorrt_available():
            rows += [("tensorrt", "fp16")]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CARLA folder with CameraRGB/ and CameraMask/")
    ap.add_argument("--weights", help="checkpoint (default: the shipped model)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")

    ckpt = load_checkpoint(args.weights)
    frames = FrameSet(checkpoint_split(args.data, ckpt, "val"), tuple(ckpt["input_size"]))
    rows, reference, seen = [], None, set()
    for name, precision in plan():
        b = engine.load(args.weights, backend=name, precision=precision, max_batch=8)
        if (b.name, b.precision) in seen:
            continue  # asked for reduced precision, ran FP32: already measured
        seen.add((b.name, b.precision))
        cm, labels = ConfusionMatrix(len(ckpt["class_names"])), []
        for images, masks in frames.batches(8, augment=False):
            pred = b(images.to(b.device)).cpu()
            cm.update(pred, masks)
            labels.append(pred)
        labels = torch.cat(labels)
        reference = labels if reference is None else reference
        rows.append({"backend": b.name, "precision": b.precision, "device": str(b.device), "frames": len(frames),
                     "pixel_accuracy": cm.pixel_accuracy(), "miou": cm.miou(),
                     "agreement_with_first": (labels == reference).float().mean().item()})
        r = rows[-1]
        print(f"{r['backend']:<12} {r['precision']:<5} pixel acc {r['pixel_accuracy']:.4f}  mIoU {r['miou']:.4f}  "
              f"labels = {rows[0]['backend']} {rows[0]['precision']} on {100 * r['agreement_with_first']:.3f}% "
              f"of pixels ({r['frames']} frames)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
