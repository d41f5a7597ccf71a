"""`segpipe eval`: per-class IoU of a checkpoint on CARLA frames, and a picture of its output."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from train.checkpoint import load_model
from train.classes import palette_lut
from train.data import FrameSet, find_pairs, read_pair, split_by_runs
from train.errors import InvalidInputError
from train.metrics import ConfusionMatrix
from train.model import border_margin, center_crop, frame_size_for
from train.trainer import DEFAULTS, evaluate, normalizer, pick_device

log = logging.getLogger("segpipe.train")


def evaluate_checkpoint(data, weights=None, split: str = "val", device: str = "auto", grid: str | None = None,
                        grid_frames: int = 4, native: bool = False) -> dict:
    """Scores at the model's input size (masks scaled down, as in training), or with ``native`` at each
    frame's own size, the labels as `segpipe run --masks` writes them."""
    model, ckpt = load_model(weights)
    dev = pick_device(device)
    model.to(dev)
    pairs = checkpoint_split(data, ckpt, split)
    size = tuple(ckpt["input_size"])
    normalize = normalizer(ckpt["normalize"], dev)
    num_classes = model.config.num_classes
    frames = FrameSet(pairs, size, num_classes=num_classes) if grid or not native else None
    if native:
        cm = evaluate_native(model, pairs, size, normalize, dev, num_classes)
    else:
        cm, _ = evaluate(model, frames, dev, normalize, num_classes)
    result = {**cm.summary(ckpt["class_names"]), "frames": len(pairs),
              "scored_at": "native" if native else "x".join(map(str, size))}
    if grid:
        save_grid(model, frames, normalize, dev, ckpt["palette"], grid, grid_frames)
    return result


@torch.inference_mode()
def evaluate_native(model, pairs, size: tuple[int, int], normalize, device, num_classes: int,
                    batch_size: int = 16) -> ConfusionMatrix:
    """The labels segpipe writes, scored against the full-size masks: each frame scaled to the model's
    ``size`` (INTER_AREA, as the preprocess stage does), its labels scaled back to the frame's own size
    (INTER_NEAREST_EXACT, as the colourise stage does). A valid U-Net runs as the engine runs it: at the
    frame size for ``size``, the input mirrored at the border (engine.fused), so the labels cover the frame."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    h, w = frame_size_for(model.config, *size)
    margin = border_margin(model.config)     # frame_size_for gives sides the mirroring fits
    for start in range(0, len(pairs), batch_size):
        images, masks = zip(*(read_pair(p, num_classes) for p in pairs[start:start + batch_size]))
        small = np.stack([cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in images])
        x = normalize(torch.from_numpy(small).permute(0, 3, 1, 2).to(device))
        if margin:
            x = F.pad(x, (margin,) * 4, mode="reflect")
        pred = model(x).argmax(1)
        for mask, labels in zip(masks, pred.to(torch.uint8).cpu().numpy()):
            full = cv2.resize(labels, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
            cm.update(torch.from_numpy(full), torch.from_numpy(mask))
    return cm


def checkpoint_split(data, ckpt: dict, split: str = "val") -> list:
    """The frame pairs of ``data`` in ``split`` (val, train or all): the frames the checkpoint recorded for
    it when it was trained, or for data it never saw (or an older checkpoint), ``data`` split the same way."""
    pairs = find_pairs(data)
    if split == "all":
        return pairs
    recorded = set(ckpt.get("split", {}).get(split, ()))
    chosen = [p for p in pairs if p.stem in recorded]
    if chosen:                     # by name: frames added to the folder since cannot shift the split
        if len(chosen) < len(recorded):
            log.warning("%s holds %d of the %d %s frames this model was trained with: scoring those",
                        data, len(chosen), len(recorded), split)
        return chosen
    if recorded:
        log.info("%s holds none of the frames this model was trained with: splitting its own by runs", data)
    trained = ckpt.get("settings") or {}
    settings = {**DEFAULTS, **trained}
    if trained and "same_scene" not in trained:      # trained before runs were joined by their look
        settings["same_scene"] = 0
    train_pairs, val_pairs = split_by_runs(pairs, settings["val_every"], settings["run_gap"], settings["same_scene"])
    return val_pairs if split == "val" else train_pairs


def format_table(result: dict) -> str:
    lines = [f"{'class':<14} {'IoU':>6}"]
    lines += [f"{name:<14} {iou:6.3f}" for name, iou in
              sorted(result["per_class_iou"].items(), key=lambda kv: -kv[1])]
    lines.append(f"{'mIoU':<14} {result['miou']:6.3f}")
    lines.append(f"{'pixel acc':<14} {result['pixel_accuracy']:6.3f}   ({result['frames']} frames, scored at "
                 f"{result['scored_at']})")
    return "\n".join(lines)


@torch.inference_mode()
def save_grid(model, frames: FrameSet, normalize, device, palette, path: str | Path, count: int = 4) -> None:
    """Rows of input | ground truth | prediction for ``count`` frames spread over the set (a valid U-Net's
    input and ground truth cropped to the centre its prediction covers, as evaluate() scores it)."""
    lut = palette_lut(palette)                      # every id a mask can hold (255, ignored: black)
    idx = torch.linspace(0, len(frames) - 1, min(count, len(frames))).long()
    images, masks = next(frames.batches(len(idx), augment=False, indices=idx))
    pred = model(normalize(images.to(device))).argmax(1).cpu()
    images, masks, pred = center_crop(images, pred.shape[-2:]), center_crop(masks, pred.shape[-2:]), pred.numpy()
    rows = [np.concatenate([img.permute(1, 2, 0).numpy(), lut[gt.numpy()], lut[p]], axis=1)
            for img, gt, p in zip(images, masks, pred)]
    if not cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR)):
        raise InvalidInputError(f"could not write the grid {path}: name a .png file in a folder you can write to")
