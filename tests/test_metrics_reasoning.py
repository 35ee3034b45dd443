"""Winoground and MMVP-VLM scores against hand-computed results on known similarity blocks."""
import numpy as np
import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics import mmvp_scores, winoground_scores


def test_winoground_hand_computed():
    s = np.array([
        # [caption, image]: everything right
        [[0.9, 0.1], [0.2, 0.8]],
        # image right (each caption prefers its image), text wrong (image 1 prefers caption 0)
        [[0.9, 0.5], [0.3, 0.4]],
        # image right, text wrong: image 0 prefers caption 1
        [[0.5, 0.1], [0.6, 0.9]],
        # a tie counts as wrong
        [[0.5, 0.5], [0.5, 0.5]],
    ])
    # by hand: ex0 text T image T; ex1 text (0.9>0.3, 0.4>0.5) F, image (0.9>0.5, 0.4>0.3) T;
    # ex2 text (0.5>0.6) F, image (0.5>0.1, 0.9>0.6) T; ex3 F F
    out = winoground_scores(s)
    assert out["text"] == pytest.approx(1 / 4)
    assert out["image"] == pytest.approx(3 / 4)
    assert out["group"] == pytest.approx(1 / 4)
    assert out["text_correct"].tolist() == [True, False, False, False]
    assert out["image_correct"].tolist() == [True, True, True, False]


def test_winoground_text_only_case():
    # each image prefers its own caption (0.9>0.1, 0.96>0.95), but caption 0 prefers image 1
    s = np.array([[[0.9, 0.95], [0.1, 0.96]]])
    out = winoground_scores(s)
    assert (out["text"], out["image"], out["group"]) == (1.0, 0.0, 0.0)


def test_mmvp_per_category_and_mean_hand_computed():
    s = np.array([
        [[0.8, 0.2], [0.1, 0.9]],  # A: both right
        [[0.8, 0.2], [0.7, 0.6]],  # A: statement 1 picks image 0 -> wrong
        [[0.3, 0.4], [0.5, 0.4]],  # B: targets swapped (below) -> both right
        [[0.5, 0.5], [0.2, 0.9]],  # B: tie predicts image 1 -> statement 0 wrong
        [[0.6, 0.1], [0.0, 0.2]],  # C: right
    ])
    targets = np.array([[0, 1], [0, 1], [1, 0], [0, 1], [0, 1]])
    cats = ["A", "A", "B", "B", "C"]
    out = mmvp_scores(s, targets, cats)
    assert out["per_category"] == {"A": 0.5, "B": 0.5, "C": 1.0}
    assert out["mean"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # mean of categories, not pairs
    assert out["pair_correct"].tolist() == [True, False, True, False, True]


def test_bad_shapes_are_refused():
    with pytest.raises(ValidationError, match=r"\(n, 2, 2\)"):
        winoground_scores(np.zeros((3, 2)))
    with pytest.raises(ValidationError, match="targets"):
        mmvp_scores(np.zeros((2, 2, 2)), np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValidationError, match="categories"):
        mmvp_scores(np.zeros((2, 2, 2)), np.zeros((2, 2), int), ["a"])
