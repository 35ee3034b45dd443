"""Recall@k, image-text retrieval and zero-shot accuracy against brute force."""
import numpy as np
import pytest
import torch

from alignprobe.errors import ValidationError
from alignprobe.metrics import build_class_embeddings, recall_at_k, retrieval_metrics, zero_shot_accuracy
from alignprobe.metrics.retrieval import cap_captions_per_image


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_recall(scores, positives, k):
    hits = 0
    for s, pos in zip(scores, positives):
        top = np.argsort(-s, kind="stable")[:k]
        pos = pos if isinstance(pos, set) else set(np.atleast_1d(pos).tolist())
        hits += bool(set(top.tolist()) & pos)
    return hits / len(scores)


def random_positives(rng, n_q, n_items, max_pos=3):
    return [set(rng.choice(n_items, size=rng.integers(1, max_pos + 1), replace=False).tolist()) for _ in range(n_q)]


def test_recall_matches_brute_force_for_all_positive_formats():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((40, 30))
    pos = random_positives(rng, 40, 30)
    expected = {k: brute_recall(scores, pos, k) for k in (1, 5, 10)}
    assert recall_at_k(scores, pos) == pytest.approx(expected)
    mask = np.zeros((40, 30), bool)
    for i, p in enumerate(pos):
        mask[i, list(p)] = True
    assert recall_at_k(scores, mask) == pytest.approx(expected)
    assert recall_at_k(torch.from_numpy(scores), [np.array(sorted(p)) for p in pos]) == pytest.approx(expected)
    single = rng.integers(0, 30, 40)
    assert recall_at_k(scores, single, ks=3) == pytest.approx({3: brute_recall(scores, single, 3)})


def test_callable_scores_and_blocks():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((50, 25))
    pos = random_positives(rng, 50, 25)
    ref = recall_at_k(scores, pos, ks=(1, 2, 25))
    assert recall_at_k(lambda s, e: scores[s:e], pos, ks=(1, 2, 25), n_items=25, chunk_size=7) == ref
    assert ref[25] == 1.0


def test_ties_count_against_the_positive():
    scores = np.zeros((4, 10))
    assert recall_at_k(scores, [0, 1, 2, 3], ks=(1, 10)) == {1: 0.0, 10: 1.0}


def test_retrieval_metrics_multi_caption_matches_brute_force():
    rng = np.random.default_rng(2)
    n_img, d = 40, 16
    img = rng.standard_normal((n_img, d))
    t2i = np.concatenate([np.arange(n_img), rng.integers(0, n_img, 60)])
    rng.shuffle(t2i)
    txt = img[t2i] + 1.5 * rng.standard_normal((len(t2i), d))
    s = unit(img) @ unit(txt).T
    i2t_pos = [set(np.nonzero(t2i == i)[0].tolist()) for i in range(n_img)]
    got = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), chunk_size=9)
    for k in (1, 5, 10):
        assert got["i2t"][k] == pytest.approx(brute_recall(s, i2t_pos, k))
        assert got["t2i"][k] == pytest.approx(brute_recall(s.T, t2i, k))
    assert retrieval_metrics(torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(t2i)) == retrieval_metrics(
        img, txt, t2i
    )


def test_perfect_embeddings_give_full_recall():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((30, 64))
    t2i = np.repeat(np.arange(30), 2)
    out = retrieval_metrics(img, img[t2i], t2i, ks=(1,))
    assert out == {"i2t": {1: 1.0}, "t2i": {1: 1.0}}


def test_recall_errors():
    scores = np.random.default_rng(0).standard_normal((3, 5))
    with pytest.raises(ValidationError, match="query 1 .* has none"):
        recall_at_k(scores, [{0}, set(), {2}])
    with pytest.raises(ValidationError, match=r"positive item indices must be in \[0, 5\)"):
        recall_at_k(scores, [{0}, {7}, {2}])
    with pytest.raises(ValidationError, match="ks must be <= 5"):
        recall_at_k(scores, [0, 1, 2], ks=(1, 10))
    with pytest.raises(ValidationError, match="one entry per query"):
        recall_at_k(scores, [0, 1])
    bad = scores.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValidationError, match="scores must contain only finite"):
        recall_at_k(bad, [0, 1, 2])
    with pytest.raises(ValidationError, match="n_items is required"):
        recall_at_k(lambda s, e: scores[s:e], [0, 1, 2])


def test_retrieval_errors():
    img, txt = np.ones((3, 4)), np.ones((5, 4))
    with pytest.raises(ValidationError, match="every image needs at least one caption"):
        retrieval_metrics(img, txt, [0, 0, 1, 1, 0])
    with pytest.raises(ValidationError, match=r"image rows in \[0, 3\)"):
        retrieval_metrics(img, txt, [0, 1, 2, 3, 0])
    with pytest.raises(ValidationError, match="text_to_image must have one label per row"):
        retrieval_metrics(img, txt, [0, 1, 2])
    with pytest.raises(ValidationError, match="same feature dimension"):
        retrieval_metrics(img, np.ones((5, 3)), [0, 1, 2, 0, 1])


def test_zero_shot_matches_brute_force_and_templates():
    rng = np.random.default_rng(4)
    n_cls, n_tpl, d = 12, 3, 16
    prompts = rng.standard_normal((n_cls, n_tpl, d)) * rng.uniform(0.5, 2, (n_cls, n_tpl, 1))
    labels = rng.integers(0, n_cls, 200)
    cls = unit(unit(prompts).mean(1))
    img = cls[labels] + 0.8 * rng.standard_normal((200, d))
    s = unit(img) @ cls.T
    expected = {k: brute_recall(s, labels, k) for k in (1, 5)}
    assert zero_shot_accuracy(img, prompts, labels) == pytest.approx(expected)
    assert zero_shot_accuracy(img, cls * 3.0, labels) == pytest.approx(expected)
    built = build_class_embeddings(prompts.reshape(n_cls * n_tpl, d), n_templates=n_tpl)
    np.testing.assert_allclose(built.numpy(), cls, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(built.numpy(), axis=1), 1.0, atol=1e-6)


def test_zero_shot_errors():
    rng = np.random.default_rng(5)
    img, cls = rng.standard_normal((10, 8)), rng.standard_normal((4, 8))
    with pytest.raises(ValidationError, match=r"class indices in \[0, 4\)"):
        zero_shot_accuracy(img, cls, np.full(10, 4))
    with pytest.raises(ValidationError, match="topk must be <= 4"):
        zero_shot_accuracy(img, cls, np.zeros(10, int), topk=(1, 5))
    with pytest.raises(ValidationError, match="n_templates is required"):
        build_class_embeddings(rng.standard_normal((12, 8)))
    with pytest.raises(ValidationError, match="not a multiple of n_templates"):
        build_class_embeddings(rng.standard_normal((10, 8)), n_templates=3)
    with pytest.raises(ValidationError, match="disagrees"):
        build_class_embeddings(rng.standard_normal((4, 3, 8)), n_templates=2)


# --------------------------------------------------------------------------- the COCO / Karpathy protocol
# at most 5 captions per image, an image hit if any of its captions is in the top k
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
