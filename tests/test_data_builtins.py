"""Built-in generated sets: determinism, splits, captions, labels, fingerprints."""
import pickle

import numpy as np
import pytest

from alignprobe.errors import DataError
from alignprobe.probe.data.builtin_sets import SHAPES, shape_params
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.data.datasets import class_prompts, flatten_captions


def pixels(ds, i):
    return np.asarray(ds.load_image(i))


def test_shapes_default_size_labels_and_contract():
    ds = open_dataset("shapes")
    assert len(ds) == 3000 and ds.name == "shapes"
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (3000,)
    assert ds.class_names == list(SHAPES)
    # every class is well represented (labels come from a uniform draw)
    assert np.bincount(ds.labels, minlength=len(SHAPES)).min() > 300
    img = ds.load_image(0)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert ds.has_captions
    assert len(set(ds.ids)) == 3000 and ds.ids[42] == "shapes/00042"


def test_shapes_captions_describe_the_drawn_scene():
    ds = open_dataset("shapes?n=50")
    for i in range(50):
        p = shape_params(i)
        caps = ds.captions(i)
        assert len(caps) == 3
        for c in caps:
            assert p["shape"] in c and p["colour"] in c and p["size"] in c
        assert SHAPES[ds.labels[i]] == p["shape"]
    # the drawn colour is really there: the shape's pixels differ from the background
    img = pixels(ds, 0).astype(int)
    corner = img[0, 0] if shape_params(0)["col"] != "left" or shape_params(0)["row"] != "top" \
        else img[-1, -1]
    assert (np.abs(img - corner).sum(-1) > 60).sum() > 10


def test_builtins_are_deterministic_across_opens():
    a, b = open_dataset("shapes?n=20"), open_dataset("shapes?n=20")
    for i in (0, 7, 19):
        assert np.array_equal(pixels(a, i), pixels(b, i))
        assert a.captions(i) == b.captions(i)
    assert not np.array_equal(pixels(a, 0), pixels(a, 1))
    assert a.fingerprint() == b.fingerprint()
    d1, d2 = open_dataset("digits:test"), open_dataset("digits", split="test")
    assert np.array_equal(pixels(d1, 3), pixels(d2, 3))
    assert d1.fingerprint() == d2.fingerprint() and d1.name == d2.name == "digits:test"


@pytest.mark.parametrize("base", ["shapes", "digits"])
def test_splits_disjoint_covering_and_stratified(base):
    full, train, test = (open_dataset(base), open_dataset(f"{base}:train"),
                         open_dataset(f"{base}:test"))
    assert set(train.ids).isdisjoint(test.ids)
    assert set(train.ids) | set(test.ids) == set(full.ids)
    assert abs(len(train) / len(full) - 0.8) < 0.01
    assert set(np.unique(test.labels)) == set(np.unique(full.labels))
    # a split keeps each image's id, pixels and caption
    j = full.ids.index(test.ids[5])
    assert np.array_equal(pixels(full, j), pixels(test, 5))
    assert full.captions(j) == test.captions(5) and full.labels[j] == test.labels[5]
    assert len({train.fingerprint(), test.fingerprint(), full.fingerprint()}) == 3


def test_shapes_generation_params_change_fingerprint_and_unknown_split():
    assert open_dataset("shapes?n=20").fingerprint() != open_dataset("shapes?n=20&size=32").fingerprint()
    assert open_dataset("shapes?n=20&size=32").load_image(0).size == (32, 32)
    s0, s1 = open_dataset("shapes?n=20"), open_dataset("shapes?n=20&seed=1")
    assert sum(s0.captions(i) != s1.captions(i) for i in range(20)) > 10
    assert s0.fingerprint() != s1.fingerprint()
    with pytest.raises(DataError, match="unknown split 'val'.*train, test"):
        open_dataset("shapes:val")
    with pytest.raises(DataError, match="gives split 'train' but split='test'"):
        open_dataset("shapes:train", split="test")
    with pytest.raises(DataError, match="n must be a positive integer"):
        open_dataset("shapes?n=0")


def test_digits_images_captions_labels():
    ds = open_dataset("digits")
    assert len(ds) == 1797 and ds.class_names[7] == "seven"
    i = int(np.flatnonzero(ds.labels == 7)[0])
    caps = ds.captions(i)
    assert caps[0] == "a handwritten digit seven" and len(caps) == 3 and "7" in caps[1]
    img = ds.load_image(i)
    assert img.size == (32, 32) and img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.min() < 60 and arr.max() > 230  # dark ink on white paper


def test_flatten_captions_and_class_prompts():
    ds = open_dataset("shapes?n=10")
    texts, rows = flatten_captions(ds)
    assert len(texts) == 30 and rows.dtype == np.int64
    assert texts[3:6] == ds.captions(1) and list(rows[3:6]) == [1, 1, 1]
    prompts, cls = class_prompts(ds)
    T = len(ds.templates)
    assert len(prompts) == len(SHAPES) * T
    assert prompts[T + 1] == ds.templates[1].format(SHAPES[1]) and cls[T + 1] == 1
    assert list(cls[:T]) == [0] * T
    clip = open_dataset("shapes?n=10", templates="clip")
    assert len(clip.templates) == 80
    assert clip.fingerprint() == ds.fingerprint()  # templates change prompts, not samples


def test_builtins_pickle():
    ds = open_dataset("digits:train")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.ids == ds.ids and np.array_equal(pixels(clone, 4), pixels(ds, 4))
    sh = open_dataset("shapes?n=5")
    assert np.array_equal(pixels(pickle.loads(pickle.dumps(sh)), 2), pixels(sh, 2))
