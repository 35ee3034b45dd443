"""COCO / Karpathy retrieval protocol: at most 5 captions per image, an image hit if any caption is in the top k."""
import numpy as np
import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics.retrieval import cap_captions_per_image, retrieval_metrics


def test_cap_keeps_the_first_five_captions_of_each_image_in_order():
    # COCO-like: image 1 has 7 captions, image 2 has 6, interleaved in the annotation file
    t2i = np.array([0, 1, 1, 0, 2, 1, 2, 2, 1, 0, 2, 1, 0, 2, 1, 2, 1, 0, 2])
    keep = cap_captions_per_image(t2i)
    counts = np.bincount(t2i[keep])
    assert counts.tolist() == [5, 5, 5]
    for img in range(3):
        mine = np.flatnonzero(t2i == img)
        assert np.array_equal(keep[t2i[keep] == img], mine[:5])  # the first five, in caption order
    assert np.array_equal(cap_captions_per_image(t2i, None), np.arange(len(t2i)))
    assert np.bincount(t2i[cap_captions_per_image(t2i, 2)]).tolist() == [2, 2, 2]
    with pytest.raises(ValidationError, match="max_per_image must be a positive integer or None"):
        cap_captions_per_image(t2i, 0)


def test_image_hit_if_any_of_its_captions_is_in_the_top_k():
    rng = np.random.default_rng(0)
    n_img, d = 30, 16
    img = rng.standard_normal((n_img, d))
    t2i = np.repeat(np.arange(n_img), 6)
    txt = rng.standard_normal((len(t2i), d))
    # caption 0 of every image is its near copy; the other five are noise
    txt[::6] = img + 0.01 * rng.standard_normal((n_img, d))
    keep = cap_captions_per_image(t2i)
    res = retrieval_metrics(img, txt[keep], t2i[keep], ks=(1,))
    assert res["i2t"][1] == 1.0  # one good caption among five suffices for an image hit
    # naive image->text check: the best-scoring caption of each image belongs to it
    sims = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        txt[keep] / np.linalg.norm(txt[keep], axis=1, keepdims=True)).T
    assert np.mean(t2i[keep][sims.argmax(1)] == np.arange(n_img)) == res["i2t"][1]
