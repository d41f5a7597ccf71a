import math

import pytest
import torch

from train.metrics import ConfusionMatrix, class_weights_from_frequencies, lovasz_softmax, pixel_cross_entropy


def test_cross_entropy_hand_computed():
    # One pixel, two classes, logits (0, ln 3): p(class 1) = 3/4.
    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)
    assert pixel_cross_entropy(logits, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(0.75))
    assert pixel_cross_entropy(logits, torch.tensor([[[0]]])).item() == pytest.approx(-math.log(0.25))


def test_cross_entropy_is_mean_over_pixels_and_weighted():
    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1).expand(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    expected = (-math.log(0.25) - math.log(0.75)) / 2
    assert pixel_cross_entropy(logits, labels).item() == pytest.approx(expected)
    w = torch.tensor([3.0, 1.0])  # weighted mean: (3*l0 + 1*l1) / (3 + 1)
    assert pixel_cross_entropy(logits, labels, w).item() == pytest.approx(
        (-3 * math.log(0.25) - math.log(0.75)) / 4)


def test_lovasz_is_one_minus_iou_on_sure_predictions():
    labels = torch.tensor([[[0, 0, 1, 1]]])
    sure = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 1]]]), 3).permute(0, 3, 1, 2).float() * 100
    # class 0: IoU 1/2, class 1: IoU 2/3; class 2 is absent from the labels and does not count
    assert lovasz_softmax(sure, labels).item() == pytest.approx(((1 - 1 / 2) + (1 - 2 / 3)) / 2, abs=1e-6)
    right = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 100
    assert lovasz_softmax(right, labels).item() == pytest.approx(0, abs=1e-6)


def test_lovasz_gradient_lowers_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    labels = torch.randint(0, 4, (2, 6, 6))
    loss = lovasz_softmax(logits, labels)
    loss.backward()
    assert lovasz_softmax(logits.detach() - 1.0 * logits.grad, labels) < loss


def test_confusion_metrics_hand_computed():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 2]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.pixel_accuracy() == pytest.approx(6 / 8)
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(1 / 3)   # tp 1, gt 2, pred 2
    assert iou[1].item() == pytest.approx(2 / 3)   # tp 2, gt 2, pred 3
    assert iou[2].item() == pytest.approx(3 / 4)   # tp 3, gt 4, pred 3
    assert math.isnan(iou[3].item())               # never seen: not counted
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 3 / 4) / 3)


def test_miou_counts_classes_present_in_ground_truth_only():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))  # class 2 predicted, never in ground truth
    assert cm.miou() == pytest.approx(0.5)                 # class 0 alone: tp 1 / union 2
    summary = cm.summary(["a", "b", "c"])
    assert set(summary["per_class_iou"]) == {"a"}


def test_class_weights_favour_rare_classes():
    freq = torch.tensor([0.9, 0.09, 0.01, 0.0], dtype=torch.float64)
    w = class_weights_from_frequencies(freq)
    assert w[2] > w[1] > w[0] and w[3] == 0
    assert (w.double() * freq).sum().item() == pytest.approx(1.0, rel=1e-3)


def test_pixels_labelled_255_count_for_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    labels = torch.randint(0, 4, (2, 3, 5))
    ignored = labels.clone()
    ignored[:, 0] = 255
    keep = ignored != 255
    flat = logits.permute(0, 2, 3, 1)[keep]                            # the labelled pixels alone
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    assert torch.allclose(pixel_cross_entropy(logits, ignored, w),
                          torch.nn.functional.cross_entropy(flat, labels[keep], weight=w))
    assert torch.allclose(lovasz_softmax(logits, ignored), lovasz_softmax(flat.T[None, :, :, None], labels[keep][None, :, None]))
    cm, cm_kept = ConfusionMatrix(4), ConfusionMatrix(4)
    cm.update(logits.argmax(1), ignored)
    cm_kept.update(logits.argmax(1)[keep], labels[keep])
    assert torch.equal(cm.matrix, cm_kept.matrix) and cm.matrix.sum() == keep.sum()
    nothing = pixel_cross_entropy(logits, torch.full_like(labels, 255)) + lovasz_softmax(logits, torch.full_like(labels, 255))
    nothing.backward()                                               # a crop of nothing but void: no loss, no NaN
    assert nothing.item() == 0 and torch.isfinite(logits.grad).all()
