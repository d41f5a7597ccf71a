"""Pixel-wise loss and segmentation metrics from a confusion matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255     # a mask's pixels to leave out of the loss and the scores (Cityscapes' "void", mmseg's default)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse categorical cross-entropy per pixel: logits (N, C, H, W), integer labels (N, H, W); pixels
    labelled ``IGNORE`` count for nothing."""
    labels = labels.long()
    if not (labels != IGNORE).any():                 # all ignored: no loss (the mean would be 0/0)
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=class_weights, ignore_index=IGNORE)


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The Lovasz-softmax loss (Berman et al., CVPR 2018): the convex extension of 1 - IoU of each class
    present in ``labels``, averaged; it optimises mIoU itself, where cross-entropy favours the big
    classes. On one-hot probabilities it is exactly 1 - IoU. Logits (N, C, H, W), labels (N, H, W)."""
    probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    labels = labels.reshape(-1).long()
    keep = labels != IGNORE
    probs, labels = probs[keep], labels[keep]
    if not len(labels):
        return logits.sum() * 0.0
    losses = []
    for c in labels.unique():
        fg = (labels == c).float()
        errors, order = (fg - probs[:, c]).abs().sort(descending=True)
        fg = fg[order]
        total = fg.sum()
        jaccard = 1 - (total - fg.cumsum(0)) / (total + (1 - fg).cumsum(0))   # 1 - IoU of each prefix
        losses.append(errors @ torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]]))
    return torch.stack(losses).mean()


def class_weights_from_frequencies(freq: torch.Tensor, power: float = 0.5, max_weight: float = 10.0) -> torch.Tensor:
    """Inverse-frequency weights (freq^-power), normalised to a pixel-weighted mean of 1.

    Absent classes get weight 0 (they contribute nothing either way)."""
    w = torch.zeros_like(freq, dtype=torch.float32)
    present = freq > 0
    w[present] = freq[present].float() ** -power
    w = w / (w * freq.float()).sum()
    return w.clamp(max=max_weight)


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix: rows are ground truth, columns are predictions."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        target, pred = target.flatten().long(), pred.flatten().long()
        idx = torch.where(target != IGNORE, target * c + pred, c * c)     # ignored pixels: one bin past the end
        self.matrix += torch.bincount(idx, minlength=c * c + 1)[:c * c].reshape(c, c).cpu()

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum().item()
        return self.matrix.diag().sum().item() / total if total else 0.0

    def iou(self) -> torch.Tensor:
        """IoU per class; NaN for classes absent from both ground truth and prediction."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def present(self) -> torch.Tensor:
        return self.matrix.sum(1) > 0

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth."""
        iou, present = self.iou(), self.present()
        return iou[present].mean().item() if present.any() else 0.0

    def summary(self, class_names) -> dict:
        iou, present = self.iou(), self.present()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {class_names[i]: float(iou[i]) for i in range(self.num_classes) if present[i]},
        }
