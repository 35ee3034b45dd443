"""segmentation_scores against a brute-force count over pixels written out here."""
import numpy as np
import pytest
import torch

from alignprobe.errors import ValidationError
from alignprobe.metrics import SegmentationAccumulator, segmentation_scores


def _brute_force(preds, targets, k, ignore):
    inter = [0] * k
    union = [0] * k
    correct = labelled = 0
    for p, t in zip(preds, targets):
        for pv, tv in zip(np.ravel(p).tolist(), np.ravel(t).tolist()):
            if tv == ignore:
                continue
            labelled += 1
            if pv == tv:
                correct += 1
                inter[tv] += 1
                union[tv] += 1
            else:
                union[tv] += 1
                union[pv] += 1
    ious = [inter[c] / union[c] if union[c] else None for c in range(k)]
    present = [v for v in ious if v is not None]
    return sum(present) / len(present), ious, correct / labelled


def test_equals_brute_force_with_ignored_pixels_and_absent_classes():
    rng = np.random.RandomState(0)
    k = 6
    preds, targets = [], []
    for shape in [(7, 9), (5, 5), (11, 4)]:
        t = rng.randint(0, 4, size=shape)  # classes 4 and 5 never in a target
        t[rng.rand(*shape) < 0.2] = 255
        p = rng.randint(0, 5, size=shape)  # class 4 predicted, never true; class 5 nowhere
        preds.append(p)
        targets.append(t)
    miou, ious, acc = _brute_force(preds, targets, k, 255)
    out = segmentation_scores(preds, targets, num_classes=k)
    assert out["miou"] == pytest.approx(miou)
    assert out["pixel_acc"] == pytest.approx(acc)
    for c in range(k):
        if ious[c] is None:
            assert np.isnan(out["iou"][c])
        else:
            assert out["iou"][c] == pytest.approx(ious[c])
    assert np.isnan(out["iou"][5]) and out["iou"][4] == 0.0  # predicted-only class counts as 0
    assert out["pixels"] == sum(int((t != 255).sum()) for t in targets)


def test_sums_over_the_set_not_per_image_mean():
    # image A: class 0 everywhere, right; image B: class 1 tiny, wrong
    a_t = np.zeros((4, 4), int)
    b_t = np.array([[1, 0], [0, 0]])
    b_p = np.zeros((2, 2), int)
    out = segmentation_scores([a_t, b_p], [a_t, b_t], num_classes=2)
    assert out["iou"][0] == pytest.approx(19 / 20)
    assert out["iou"][1] == 0.0 and out["miou"] == pytest.approx((19 / 20) / 2)


def test_stack_tensor_and_accumulator_agree():
    rng = np.random.RandomState(1)
    t = rng.randint(0, 3, size=(4, 6, 6))
    p = rng.randint(0, 3, size=(4, 6, 6))
    whole = segmentation_scores(torch.from_numpy(p), torch.from_numpy(t), 3)
    acc = SegmentationAccumulator(3)
    for i in range(4):
        acc.update(p[i], t[i])
    assert acc.scores()["miou"] == pytest.approx(whole["miou"])


def test_bad_input_is_refused_with_a_clear_message():
    t = np.zeros((3, 3), int)
    with pytest.raises(ValidationError, match="outside 0..2"):
        segmentation_scores(np.full((3, 3), 3), t, 3)
    with pytest.raises(ValidationError, match="same shape"):
        segmentation_scores(np.zeros((2, 3), int), t, 3)
    with pytest.raises(ValidationError, match="integer class indices"):
        segmentation_scores(np.zeros((3, 3)), t, 3)
    with pytest.raises(ValidationError, match="no labelled pixels"):
        segmentation_scores(t, np.full((3, 3), 255), 3)
