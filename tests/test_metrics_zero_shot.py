"""Zero-shot top-5 only with at least 5 classes (CLIP_benchmark zeroshot_classification.py)."""
import numpy as np
import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics.zero_shot import reportable_topk, zero_shot_accuracy, zero_shot_scores


def problem(n_classes, n=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.standard_normal((n_classes, d))
    y = rng.integers(0, n_classes, n)
    img = cls[y] + 1.5 * rng.standard_normal((n, d))
    return img, cls, y


def test_reportable_topk():
    assert reportable_topk(1000) == (1, 5)
    assert reportable_topk(5) == (1, 5)
    assert reportable_topk(4) == (1,)
    assert reportable_topk(2, (1, 2, 5)) == (1, 2)


@pytest.mark.parametrize("n_classes", [3, 4])
def test_fewer_than_five_classes_have_no_top5(n_classes):
    img, cls, y = problem(n_classes)
    out = zero_shot_scores(img, cls, y)
    assert set(out) == {"zero_shot_top1"}
    assert out["zero_shot_top1"] == zero_shot_accuracy(img, cls, y, topk=1)[1]


def test_five_or_more_classes_have_top5_equal_to_the_accuracy():
    img, cls, y = problem(12)
    out = zero_shot_scores(img, cls, y)
    ref = zero_shot_accuracy(img, cls, y, topk=(1, 5))
    assert out == {"zero_shot_top1": ref[1], "zero_shot_top5": ref[5]}
    assert out["zero_shot_top5"] < 1.0  # a real top-5, not a clamped top-C
    with pytest.raises(ValidationError, match="class_text_emb must be"):
        zero_shot_scores(img, cls[0], y)
