"""Tiny inputs that must not exhaust memory or time, and the reuse key of the files a dataset spec
names: labels through the values present, IDX headers checked while streaming, captions
cut before tokenising, an image-size limit, class-name and template files in the fingerprint."""
import gzip
import json
import logging
import math
import struct

import numpy as np
import pytest
from PIL import Image

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data import datasets
from alignprobe.probe.data.datasets import FileDataset, decode_image, flatten_captions
from alignprobe.probe.data.readers_idx import read_idx
from alignprobe.probe.data.spec import open_dataset


def draw(path, size=(8, 6), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def idx_bytes(shape, data: bytes, code=0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data


def write_idx(path, array, code=0x08, gz=False):
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    raw = idx_bytes(array.shape, array.astype(dtype).tobytes(), code)
    (gzip.open if gz else open)(path, "wb").write(raw)
    return path


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_huge_integer_label_is_one_class_not_a_range(tmp_path, fmt):
    for n in "abc":
        draw(tmp_path / f"{n}.png")
    rows = [("a.png", "one", 99999999999), ("b.png", "two", 3), ("c.png", "three", 99999999999)]
    if fmt == "csv":
        f = tmp_path / "p.csv"
        f.write_text("image,caption,label\n" + "".join(f"{i},{c},{lab}\n" for i, c, lab in rows))
    else:
        f = tmp_path / "p.jsonl"
        f.write_text("".join(json.dumps({"image": i, "caption": c, "label": lab}) + "\n" for i, c, lab in rows))
    ds = open_dataset(f"{fmt}:{f}")
    assert ds.labels.tolist() == [1, 0, 1]  # numeric order: 3 < 99999999999
    assert ds.class_keys == ["3", "99999999999"] and ds.n_classes == 2


def test_dense_integer_labels_keep_their_ids_and_sparse_ones_take_names_by_value(tmp_path):
    for n in "abcd":
        draw(tmp_path / f"{n}.png")
    f = tmp_path / "p.csv"
    f.write_text("image,caption,label\na.png,x,0\nb.png,y,2\nc.png,z,1\nd.png,w,2\n")
    assert open_dataset(f"csv:{f}").labels.tolist() == [0, 2, 1, 2]
    # one split holds labels 1 and 7 only: a class-names file in label order still applies, by value
    f.write_text("image,caption,label\na.png,x,7\nb.png,y,1\n")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {k}" for k in range(10)) + "\n")
    ds = open_dataset(f"csv:{f}?class_names={names}")
    assert ds.labels.tolist() == [1, 0] and ds.class_names == ["class 1", "class 7"]
    # string labels are names of their own: the list must match them one for one
    f.write_text("image,caption,label\na.png,x,cat\nb.png,y,dog\n")
    with pytest.raises(DataError, match="lists 10 names but the data has 2"):
        open_dataset(f"csv:{f}?class_names={names}")


def test_idx_label_of_2_31_is_one_class(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([2**31 - 1, 0, 2**31 - 1]), code=0x0C)
    ds = open_dataset(f"idx:{tmp_path}?split=train")
    assert ds.labels.tolist() == [1, 0, 1] and ds.class_keys == ["0", str(2**31 - 1)]


# --------------------------------------------------------------------------- IDX headers
@pytest.mark.parametrize("gz", [False, True])
def test_idx_shape_whose_product_overflows_is_refused_before_reading(tmp_path, gz):
    path = tmp_path / ("x.gz" if gz else "x")
    raw = idx_bytes((2**32 - 1, 2**32 - 1, 2**32 - 1), b"\0" * 64)
    (gzip.open if gz else open)(path, "wb").write(raw)
    with pytest.raises(DataError, match=r"header says shape \(4294967295, 4294967295, 4294967295\)"):
        read_idx(path)


def test_gzip_idx_claiming_more_than_deflate_can_hold_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "labels.gz"
    # 1e9 bytes claimed by a file of a few dozen bytes: deflate cannot expand that much
    gzip.open(path, "wb").write(idx_bytes((10**9,), b"\1" * 100))
    reads = []
    real = gzip.GzipFile.read

    def counting(self, size=-1):
        reads.append(size)
        return real(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", counting)
    with pytest.raises(DataError, match="can inflate to at most"):
        read_idx(path)
    assert sum(r for r in reads if r and r > 0) <= 8  # the magic and the one dimension, nothing more


def test_gzip_idx_with_more_data_than_its_header_stops_after_one_byte(tmp_path, monkeypatch):
    path = tmp_path / "images.gz"
    # a header for 2 x 2 x 2 bytes followed by 8 MB of zeros (a few kB compressed)
    gzip.open(path, "wb").write(idx_bytes((2, 2, 2), bytes(8 << 20)))
    wanted = []
    real = gzip.GzipFile.read

    def counting(self, size=-1):
        wanted.append(size)
        return real(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", counting)
    with pytest.raises(DataError, match="holds more"):
        read_idx(path)
    assert -1 not in wanted and sum(wanted) <= 4 + 12 + 8 + 1


def test_truncated_and_exact_idx_files(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    for gz in (False, True):
        p = write_idx(tmp_path / ("a.gz" if gz else "a"), a, gz=gz)
        np.testing.assert_array_equal(read_idx(p), a)
    raw = idx_bytes((3, 4, 5), a.tobytes())
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "hdr").write_bytes(raw[:9])
    with pytest.raises(DataError, match="ends inside the header"):
        read_idx(tmp_path / "hdr")


# --------------------------------------------------------------------------- captions
def test_long_captions_are_cut_before_tokenising_and_counted(tmp_path, caplog, monkeypatch):
    draw(tmp_path / "a.png")
    draw(tmp_path / "b.png")
    long = "word " * 5000  # 25,000 characters
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"image": "a.png", "caption": [long, "short", long]}) + "\n"
                 + json.dumps({"image": "b.png", "caption": "fine"}) + "\n")
    ds = open_dataset(f"jsonl:{f}")
    with caplog.at_level(logging.WARNING, logger="alignprobe.data"):
        texts, rows = flatten_captions(ds)
    assert [len(t) for t in texts] == [4096, 5, 4096, 4] and rows.tolist() == [0, 0, 0, 1]
    assert texts[0] == long.strip()[:4096]
    assert "2 caption(s) longer than 4096 characters" in caplog.text and "'a.png'" in caplog.text
    monkeypatch.setenv("ALIGNPROBE_MAX_CAPTION_CHARS", "10")
    assert [len(t) for t in flatten_captions(ds)[0]] == [10, 5, 10, 4]
    monkeypatch.setenv("ALIGNPROBE_MAX_CAPTION_CHARS", "lots")
    with pytest.raises(DataError, match="ALIGNPROBE_MAX_CAPTION_CHARS"):
        flatten_captions(ds)


# --------------------------------------------------------------------------- image size
def test_images_above_the_pixel_limit_are_refused_naming_the_file(tmp_path, monkeypatch):
    img = draw(tmp_path / "big.png", size=(300, 300))
    ds = FileDataset("t", ["big"], [str(img)], None)
    assert ds.load_image(0).size == (300, 300)  # 90,000 pixels: far below PIL's default limit
    # 90,000 pixels against a limit of 50,000: PIL alone would only warn (it refuses at 2x its limit)
    monkeypatch.setenv("ALIGNPROBE_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(ImageLoadError) as exc:
        ds.load_image(0)
    assert exc.value.path == str(img) and "90,000 pixels is above the limit of 50,000" in str(exc.value)
    assert "ALIGNPROBE_MAX_IMAGE_PIXELS=90000" in str(exc.value)
    with pytest.raises(ImageLoadError, match="above the limit"):  # file objects (tar members) too
        decode_image(open(img, "rb"), "member", "shard.tar:big.png")
    monkeypatch.setenv("ALIGNPROBE_MAX_IMAGE_PIXELS", "90000")
    assert ds.load_image(0).size == (300, 300)
    monkeypatch.setenv("ALIGNPROBE_MAX_IMAGE_PIXELS", "-3")
    with pytest.raises(DataError, match="must be a positive integer"):
        ds.load_image(0)


def test_default_pixel_limit_is_pils():
    assert datasets.max_image_pixels() == datasets.DEFAULT_MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3


def test_a_bomb_header_is_refused_without_decoding(tmp_path, monkeypatch):
    """A PNG whose header claims 20,000 x 5,000 pixels (100 M, above PIL's 89.5 M) but whose
    data is tiny: refused from the header, before any decoding allocates 300 MB."""
    import zlib
    png = tmp_path / "bomb.png"

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 20000, 5000, 8, 0, 0, 0, 0)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                    + chunk(b"IEND", b""))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageLoadError, match="100,000,000 pixels is above the limit of 89,478,485 pixels"):
        decode_image(str(png), "bomb", str(png))


# --------------------------------------------------------------------------- files a spec names
def test_swapping_two_class_names_changes_the_fingerprint_not_the_image_key(tmp_path):
    for cls in ("cat", "dog", "eel"):
        draw(tmp_path / "data" / cls / "1.png")
    names = tmp_path / "names.txt"
    names.write_text("cat a cat\ndog a dog\neel an eel\n")
    spec = f"folder:{tmp_path / 'data'}?class_names={names}"
    before = open_dataset(spec)
    names.write_text("cat a dog\ndog a cat\neel an eel\n")
    after = open_dataset(spec)
    assert after.class_names == ["a dog", "a cat", "an eel"]
    assert after.fingerprint() != before.fingerprint()
    assert after.describe()["fingerprint"] != before.describe()["fingerprint"]
    assert after.image_fingerprint() == before.image_fingerprint()  # image embeddings stay cached
    # same content written again: the same key
    names.write_text("cat a cat\ndog a dog\neel an eel\n")
    assert open_dataset(spec).fingerprint() == before.fingerprint()


def test_editing_a_templates_file_changes_the_fingerprint(tmp_path):
    for cls in ("cat", "dog"):
        draw(tmp_path / "data" / cls / "1.png")
    tpl = tmp_path / "t.json"
    tpl.write_text(json.dumps(["a photo of a {}."]))
    spec = f"folder:{tmp_path / 'data'}?templates={tpl}"
    before = open_dataset(spec).fingerprint()
    tpl.write_text(json.dumps(["a sketch of a {}."]))
    assert open_dataset(spec).fingerprint() != before
    # built-in template sets are not files: the data's own digest is unchanged by them
    plain = open_dataset(f"folder:{tmp_path / 'data'}")
    assert open_dataset(f"folder:{tmp_path / 'data'}?templates=simple").fingerprint() == plain.fingerprint()
    assert not math.isnan(len(plain.fingerprint()))
