"""The IDX reader (`idx:DIR`) and the `fashion-mnist` built-in, on tiny IDX files written here."""

import gzip
import struct

import numpy as np
import pytest

from alignprobe.errors import DataError
from alignprobe.probe.data import readers_idx
from alignprobe.probe.data.readers_idx import read_idx
from alignprobe.probe.data.spec import open_dataset


def write_idx(path, array, code=0x08, gz=False):
    """An IDX file as the MNIST page defines it: 0, 0, type code, ndim, big-endian dims, data."""
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(dtype).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)
    return path


def tiny_set(root, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 5, 7), dtype=np.uint8)
        y = np.arange(n) % 3
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", x, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y, gz=gz)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_types_and_shapes(tmp_path, gz):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz" if gz else tmp_path / "a", a, gz=gz)), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    got = read_idx(write_idx(tmp_path / "f", f, code=0x0D))
    assert got.dtype == np.float32 and np.array_equal(got, f)
    s = np.array([-300, 7, 1000], dtype=np.int16)
    assert np.array_equal(read_idx(write_idx(tmp_path / "s", s, code=0x0B)), s)


def test_read_idx_refuses_bad_headers_and_truncation(tmp_path):
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    good = write_idx(tmp_path / "t", np.zeros((4, 3, 3), np.uint8)).read_bytes()
    (tmp_path / "t").write_bytes(good[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_splits_labels_and_images(tmp_path, gz):
    data = tiny_set(tmp_path, gz=gz)
    train = open_dataset(f"idx:{tmp_path}", split="train")
    assert len(train) == 6 and train.ids[0] == "train/00000" and not train.has_captions
    assert np.array_equal(train.labels, data["train"][1]) and train.class_keys == ["0", "1", "2"]
    img = train.load_image(4)
    assert img.mode == "RGB" and img.size == (7, 5)
    assert np.array_equal(np.asarray(img)[..., 0], data["train"][0][4])
    test = open_dataset(f"idx:{tmp_path}?split=test")
    assert len(test) == 4 and test.ids[-1] == "t10k/00003"
    both = open_dataset(f"idx:{tmp_path}")
    assert len(both) == 10 and both.ids[6] == "t10k/00000"
    assert np.array_equal(np.asarray(both.load_image(7))[..., 0], data["t10k"][0][1])
    assert len({train.fingerprint(), test.fingerprint(), both.fingerprint()}) == 3


def test_idx_fingerprint_follows_the_pixels_not_the_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    tiny_set(a, seed=1), tiny_set(b, seed=1, gz=False)
    assert open_dataset(f"idx:{a}").image_fingerprint() == open_dataset(f"idx:{b}").image_fingerprint()
    c = tmp_path / "c"
    c.mkdir()
    tiny_set(c, seed=2)
    assert open_dataset(f"idx:{a}").image_fingerprint() != open_dataset(f"idx:{c}").image_fingerprint()


def test_idx_missing_and_mismatched_files_are_named(tmp_path):
    tiny_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    open_dataset(f"idx:{tmp_path}", split="train")  # the train pair is complete
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        open_dataset(f"idx:{tmp_path}", split="test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3), gz=True)  # 3 labels, 4 images
    with pytest.raises(DataError, match="one label per image"):
        open_dataset(f"idx:{tmp_path}", split="test")
    with pytest.raises(DataError, match="unknown split"):
        open_dataset(f"idx:{tmp_path}", split="val")
    with pytest.raises(DataError, match="not a directory"):
        open_dataset(f"idx:{tmp_path / 'nowhere'}")


def test_fashion_mnist_from_alignprobe_data(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    data = tiny_set(folder, n_train=10, n_test=5)
    monkeypatch.setenv("ALIGNPROBE_DATA", str(tmp_path))
    ds = open_dataset("fashion-mnist:test")
    assert ds.name == "fashion-mnist:test" and len(ds) == 5 and ds.kind == "fashion-mnist"
    assert ds.class_names[0] == "t-shirt or top" and len(ds.class_names) == 10
    assert ds.ids[0] == "fashion-mnist/t10k/00000"
    # template captions from the class name, as the other built-ins have
    label = int(data["t10k"][1][2])
    caps = ds.captions(2)
    assert ds.has_captions and len(caps) == 3 and all(ds.class_names[label] in c for c in caps)
    assert open_dataset("fashion-mnist:train").captions(0)[0] == "a photo of a t-shirt or top"
    assert len(open_dataset("fashion-mnist")) == 15
    assert ds.templates and "{}" in ds.templates[0]


def test_fashion_mnist_missing_names_the_package_and_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_idx, "FASHION_DIRS", (str(tmp_path / "no-such-dir"),))
    monkeypatch.setenv("ALIGNPROBE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        open_dataset("fashion-mnist:train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "ALIGNPROBE_DATA" in msg


def test_fashion_mnist_balanced_subset(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    tiny_set(folder, n_train=30, n_test=9)  # labels 0,1,2 repeating: 10 of each class in train
    monkeypatch.setenv("ALIGNPROBE_DATA", str(tmp_path))
    sub = open_dataset("fashion-mnist:train?n=7")
    assert sub.name == "fashion-mnist:train?n=7" and len(sub) == 7
    assert sorted(np.bincount(sub.labels).tolist()) == [2, 2, 3]  # as even as 7 over 3 classes allows
    again = open_dataset("fashion-mnist:train?n=7")
    assert again.ids == sub.ids and again.image_fingerprint() == sub.image_fingerprint()
    full = open_dataset("fashion-mnist:train")
    k = full.ids.index(sub.ids[3])  # a subset image is the same image, under the same id
    assert np.array_equal(np.asarray(sub.load_image(3)), np.asarray(full.load_image(k)))
    assert open_dataset("fashion-mnist:train?n=8").image_fingerprint() != sub.image_fingerprint()
    with pytest.raises(DataError, match="more than the 30 images"):
        open_dataset("fashion-mnist:train?n=31")
