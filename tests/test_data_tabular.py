"""CSV / TSV / JSONL image-caption pairs."""
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.spec import open_dataset


def draw(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)


@pytest.fixture
def pairs(tmp_path):
    draw(tmp_path / "img" / "a.png", (255, 0, 0))
    draw(tmp_path / "img" / "b.jpg", (0, 0, 255))
    draw(tmp_path / "elsewhere" / "c.png", (0, 255, 0))
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "image,caption,extra_captions,label\n"
        'img/a.png,a red square,"[""a red box"", ""crimson""]",1\n'
        "img/b.jpg,a blue square,a navy box|cobalt,0\n"
        f"{tmp_path / 'elsewhere' / 'c.png'},a green square,,1\n")
    return tmp_path, csv


def test_csv_ids_captions_labels_images(pairs):
    root, csv = pairs
    ds = open_dataset(str(csv))
    assert ds.name == f"csv:{csv}"
    assert ds.ids == ["img/a.png", "img/b.jpg", str(root / "elsewhere" / "c.png")]
    assert ds.captions(0) == ["a red square", "a red box", "crimson"]
    assert ds.captions(1) == ["a blue square", "a navy box", "cobalt"]
    assert ds.captions(2) == ["a green square"]
    assert ds.labels.tolist() == [1, 0, 1] and ds.labels.dtype == np.int64
    assert ds.class_names is None and ds.n_classes == 2
    assert ds.load_image(0).getpixel((3, 3)) == (255, 0, 0)
    assert ds.load_image(2).getpixel((0, 0)) == (0, 255, 0)
    assert ds.load_image(1).mode == "RGB"
    d = ds.describe()
    assert d["n"] == 3 and d["n_captions"] == 7 and d["kind"] == "table"
    json.dumps(d)


def test_fingerprint_stable_and_changes_with_image_or_caption(pairs):
    root, csv = pairs
    fp = open_dataset(f"csv:{csv}").fingerprint()
    assert open_dataset(f"csv:{csv}").fingerprint() == fp
    draw(root / "img" / "b.jpg", (0, 0, 250))  # rewrite one image: size or mtime changes
    st = os.stat(root / "img" / "b.jpg")
    os.utime(root / "img" / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fp2 = open_dataset(f"csv:{csv}").fingerprint()
    assert fp2 != fp
    csv.write_text(csv.read_text().replace("a green square", "a lime square"))
    assert open_dataset(f"csv:{csv}").fingerprint() != fp2


def test_missing_and_corrupt_images_raise_image_load_error(tmp_path):
    draw(tmp_path / "ok.png", (1, 2, 3))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    full = tmp_path / "trunc.png"
    Image.effect_noise((64, 64), 50).save(full)
    full.write_bytes(full.read_bytes()[:200])
    (tmp_path / "p.csv").write_text(
        "filepath,text\nok.png,fine\nnope.png,missing\nbad.jpg,corrupt\ntrunc.png,truncated\n")
    ds = open_dataset(f"csv:{tmp_path / 'p.csv'}")
    assert ds.load_image(0).size == (12, 10)
    for i, word in ((1, "not found"), (2, ""), (3, "")):
        with pytest.raises(ImageLoadError) as exc:
            ds.load_image(i)
        assert exc.value.sample_id == ds.ids[i] and exc.value.path.endswith(ds.ids[i])
        assert word in exc.value.reason
    # strict checks existence only (decoding is the loader's job)
    with pytest.raises(DataError, match=r"1 of 4 image files are missing or empty.*nope\.png \(missing\)"):
        open_dataset(f"csv:{tmp_path / 'p.csv'}", strict=True)


def test_missing_column_error_names_file_row_and_expected_columns(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("picture,caption\nx.png,hello\n")
    with pytest.raises(DataError) as exc:
        open_dataset(str(f))
    msg = str(exc.value)
    assert str(f) in msg and "line 1" in msg and "'image' or 'filepath'" in msg
    assert "picture" in msg  # shows what was found


def test_short_row_error_names_file_row_and_columns(tmp_path):
    f = tmp_path / "short.csv"
    f.write_text("image,caption,label\na.png,one,0\nb.png,two\n")
    with pytest.raises(DataError) as exc:
        open_dataset(str(f))
    msg = str(exc.value)
    assert str(f) in msg and "line 3 (data row 2)" in msg
    assert "image, caption, label" in msg and "2 fields" in msg


def test_empty_caption_url_and_explicit_columns(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("image,caption\na.png,\n")
    with pytest.raises(DataError, match=r"line 2 \(data row 1\): empty caption in column 'caption'"):
        open_dataset(str(f))
    f.write_text("image,caption\nhttps://example.com/a.jpg,hi\n")
    with pytest.raises(DataError, match="is a URL.*img2dataset"):
        open_dataset(str(f))
    f.write_text("pic,desc,lab\na.png,hi,0\n")
    with pytest.raises(DataError, match="no column 'imagefile'.*columns found: \\['pic', 'desc', 'lab'\\]"):
        open_dataset(f"csv:{f}?image=imagefile&caption=desc")
    ds = open_dataset(f"csv:{f}?image=pic&caption=desc&label=lab")
    assert ds.captions(0) == ["hi"] and ds.labels.tolist() == [0]
    assert ds.name == f"csv:{f}?caption=desc&image=pic&label=lab"
    assert open_dataset(ds.name).fingerprint() == ds.fingerprint()


def test_tsv_string_labels_duplicate_rows_and_split_column(tmp_path):
    for n in "abc":
        draw(tmp_path / f"{n}.png", (0, 0, 0))
    f = tmp_path / "p.tsv"
    f.write_text("image\tcaption\tlabel\tsplit\n"
                 "a.png\ta cat, sitting\tcat\ttrain\n"
                 "b.png\ta dog\tdog\ttest\n"
                 "a.png\tanother cat\tcat\ttrain\n"
                 "c.png\ta bird\tbird\ttest\n")
    ds = open_dataset(str(f))
    assert ds.ids == ["a.png", "b.png", "c.png"]
    assert ds.captions(0) == ["a cat, sitting", "another cat"]
    assert ds.class_names == ["bird", "cat", "dog"] and ds.labels.tolist() == [1, 2, 0]
    test = open_dataset(str(f), split="test")
    assert test.ids == ["b.png", "c.png"] and test.name.endswith("?split=test")
    assert test.fingerprint() != ds.fingerprint()
    with pytest.raises(DataError, match="no rows have split 'val'"):
        open_dataset(str(f), split="val")
    g = tmp_path / "nosplit.csv"
    g.write_text("image,caption\na.png,x\n")
    with pytest.raises(DataError, match="no 'split' column"):
        open_dataset(str(g), split="train")


def test_conflicting_labels_for_one_image(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("image,caption,label\na.png,x,0\na.png,y,1\n")
    with pytest.raises(DataError, match="label '1' here but '0' at line 2"):
        open_dataset(str(f))


def test_jsonl_lists_extra_and_errors(tmp_path):
    draw(tmp_path / "a.png", (5, 5, 5))
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"image": "a.png", "caption": ["main", "alt 1"],
                             "extra_captions": ["alt 2"], "label": 3}) + "\n\n"
                 + json.dumps({"image": "b.png", "caption": "b main"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl, line 3 \(data row 2\): column 'label' is missing"):
        open_dataset(str(f))
    f.write_text(json.dumps({"image": "a.png", "caption": ["main", "alt 1"],
                             "extra_captions": ["alt 2"]}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"line 2 \(data row 2\): invalid JSON"):
        open_dataset(f"jsonl:{f}")
    f.write_text(json.dumps({"image": "a.png", "caption": ["main", "alt 1"],
                             "extra_captions": ["alt 2"]}) + "\n")
    ds = open_dataset(f"jsonl:{f}")
    assert ds.captions(0) == ["main", "alt 1", "alt 2"] and ds.labels is None


def test_class_names_file_for_integer_labels(pairs, tmp_path):
    _, csv = pairs
    names = tmp_path / "names.txt"
    names.write_text("zero\none\n")
    ds = open_dataset(str(csv), class_names=str(names))
    assert ds.class_names == ["zero", "one"]
    names.write_text("only one\n")
    with pytest.raises(DataError, match="lists 1 names but the data has 2"):
        open_dataset(str(csv), class_names=str(names))


def test_table_dataset_pickles(pairs):
    _, csv = pairs
    ds = open_dataset(str(csv))
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.ids == ds.ids and clone.captions(1) == ds.captions(1)
    assert clone.load_image(0).tobytes() == ds.load_image(0).tobytes()


def test_image_fingerprint_ignores_captions_and_labels(pairs):
    root, csv = pairs
    before = open_dataset(f"csv:{csv}")
    csv.write_text(csv.read_text().replace("a green square", "a lime square").replace(",0\n", ",1\n"))
    after = open_dataset(f"csv:{csv}")
    assert after.fingerprint() != before.fingerprint()
    assert after.image_fingerprint() == before.image_fingerprint()
    draw(root / "img" / "a.png", (250, 0, 0))
    st = os.stat(root / "img" / "a.png")
    os.utime(root / "img" / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert open_dataset(f"csv:{csv}").image_fingerprint() != before.image_fingerprint()


def test_caption_edit_reuses_cached_image_embeddings(pairs):
    from alignprobe.probe.embeddings.cache import EmbeddingCache
    from alignprobe.probe.embeddings.encoding import ImageSource, TextSource, encode_source
    from test_cache import ToyImageEncoder, ToyTextEncoder

    root, csv = pairs
    cache = EmbeddingCache(root / "cache")

    def encode(ds):
        captions = [c for i in range(len(ds)) for c in ds.captions(i)]
        img = encode_source(ToyImageEncoder(), ImageSource(ds), cache=cache, quiet=True, num_workers=0)
        txt = encode_source(ToyTextEncoder(), TextSource(ds.name, captions), cache=cache, quiet=True)
        return img, txt

    img1, txt1 = encode(open_dataset(f"csv:{csv}"))
    assert not img1.cache_hit and not txt1.cache_hit
    csv.write_text(csv.read_text().replace("a green square", "a lime square"))
    img2, txt2 = encode(open_dataset(f"csv:{csv}"))
    assert img2.cache_hit, "a caption edit must not re-encode the images"
    assert not txt2.cache_hit
    np.testing.assert_array_equal(img1.embeddings.to_numpy(), img2.embeddings.to_numpy())
