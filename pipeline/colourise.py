"""Colourise: class colours over the input at its full resolution.

Views: ``overlay`` (alpha blend over the input), ``mask`` (the colours alone), ``side-by-side``
(input | colours). ``legend`` draws the classes present in the frame. ``keep_labels`` also leaves the
labels at the input's resolution in ``frame.labels_full`` (for --masks).

CPU: palette lookup at the model's (small) resolution, nearest-neighbour resize to full size, then
cv2.addWeighted: all vectorised. GPU (when the backend is): the same order on the device (palette
gather at the model's resolution, nearest upsampling by row and column gathers, the blend); only the
finished frame (and labels, if kept) leave the GPU, in one wait.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from pipeline.stage import Stage
from train.classes import palette_lut


class Colourise(Stage):
    name = "colourise"

    def __init__(self, palette, class_names, device, view: str = "overlay", alpha: float = 0.5,
                 legend: bool = False, keep_labels: bool = False):
        super().__init__()
        self.lut = palette_lut(palette)                   # any id the model could emit has a colour
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.view, self.alpha, self.legend, self.keep_labels = view, float(alpha), legend, keep_labels
        self._lut_dev = None
        self._index: dict[tuple[int, int], torch.Tensor] = {}

    def setup(self) -> None:
        if self.device.type != "cpu":
            self._lut_dev = torch.from_numpy(self.lut).to(self.device)

    def process(self, frame):
        if self.device.type == "cpu":
            present = self._cpu(frame)
        else:
            present = self._gpu(frame)
        if self.legend:
            draw_legend(frame.output, present, self.lut, self.class_names, x0=frame.output.shape[1] - frame.image.shape[1])
        frame.labels = None
        return frame

    def _cpu(self, frame):
        image = frame.image
        H, W = image.shape[:2]
        labels = frame.labels.numpy()
        colour = cv2.resize(self.lut[labels], (W, H), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.keep_labels:
            frame.labels_full = cv2.resize(labels, (W, H), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.view == "overlay":
            frame.output = cv2.addWeighted(image, 1.0 - self.alpha, colour, self.alpha, 0.0)
        elif self.view == "mask":
            frame.output = colour
        else:
            frame.output = cv2.hconcat([image, colour])
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=len(self.class_names))) if self.legend else None

    def _gpu(self, frame):
        host = to_host(self.compose(frame.image_dev, frame.labels))   # image_dev: uploaded by Preprocess
        frame.output = host.pop(0)
        if self.keep_labels:
            frame.labels_full = host.pop(0)
        frame.image_dev = None
        return np.flatnonzero(host.pop(0)) if self.legend else None

    def compose(self, image: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """On the labels' device: the finished frame, then the full-size labels (``keep_labels``) and
        the class counts (``legend``)."""
        H, W = image.shape[:2]
        h, w = labels.shape
        rows, cols = self._nearest(H, h), self._nearest(W, w)
        ids = labels.long()                                             # indices: for the colours and the counts
        colour = self._lut_dev[ids].index_select(0, rows).index_select(1, cols)   # (H, W, 3) uint8
        if self.view == "overlay":
            out = torch.lerp(image.half(), colour.half(), self.alpha).round_().to(torch.uint8)
        elif self.view == "mask":
            out = colour
        else:
            out = torch.cat([image, colour], dim=1)
        wanted = [out]
        if self.keep_labels:
            wanted.append(labels.index_select(0, rows).index_select(1, cols))
        if self.legend:     # a fixed-size count: bincount on a GPU first reads the largest label back (a wait)
            one = torch.ones((), dtype=torch.int64, device=labels.device).expand(ids.numel())
            wanted.append(torch.zeros(len(self.class_names), dtype=torch.int64, device=labels.device)
                          .index_add_(0, ids.flatten(), one))
        return wanted

    def _nearest(self, out_len: int, in_len: int) -> torch.Tensor:
        """Source index of each output pixel: OpenCV's own (INTER_NEAREST_EXACT, as the CPU path), asked
        once per size (its fixed-point ties differ from a float formula's at odd sizes)."""
        key = (out_len, in_len)
        if key not in self._index:
            idx = cv2.resize(np.arange(in_len, dtype=np.int32)[None, :], (out_len, 1),
                             interpolation=cv2.INTER_NEAREST_EXACT)[0]
            self._index[key] = torch.from_numpy(idx).long().to(self.device)
        return self._index[key]


def to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Device tensors to numpy with one wait: async copies into pinned (cached) host memory, then a single
    stream sync, instead of one blocking round trip per tensor."""
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for dst, src in zip(host, tensors):
        dst.copy_(src, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [h.numpy() for h in host]


def draw_legend(image: np.ndarray, present, lut: np.ndarray, names: list[str], x0: int = 0) -> None:
    """The classes present, a swatch and a name per row, on a darkened panel at the top left."""
    if present is None or not len(present):
        return
    scale = max(0.35, min(1.0, image.shape[0] / 900))
    row = int(22 * scale / 0.5)
    sw = row - 6
    labels = [names[i] if i < len(names) else str(i) for i in present]
    text_w = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for t in labels)
    x1 = min(image.shape[1], x0 + sw + text_w + 18)
    y1 = min(image.shape[0], row * len(labels) + 8)
    panel = image[:y1, x0:x1]
    panel >>= 1                                                      # darken, in place
    for k, (cls, text) in enumerate(zip(present, labels)):
        y = 4 + k * row
        colour = tuple(int(c) for c in lut[cls])
        cv2.rectangle(image, (x0 + 4, y + 3), (x0 + 4 + sw, y + 3 + sw), colour, -1)
        cv2.putText(image, text, (x0 + sw + 10, y + row - 6), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
