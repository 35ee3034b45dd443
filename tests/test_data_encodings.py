"""Reliability of the data readers under odd but real input: text encodings (issue 11, class 1),
opaque mixed-type COCO ids (class 2), webdataset shards cut short (class 8)."""
from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
from PIL import Image

from alignprobe.errors import DataError
from alignprobe.io import first_undecodable_byte, read_text
from alignprobe.probe.data.spec import open_dataset
from helpers import write_images


def _png(path, colour=(200, 30, 30)):
    Image.new("RGB", (8, 8), colour).save(path)


# --------------------------------------------------------------------------- class 1: encodings
def test_latin1_csv_fails_naming_file_offset_and_fix_then_reads_with_the_spec_key(tmp_path):
    write_images(tmp_path, 2)
    text = "image,caption\nim0.png,a caf\u00e9 by the sea\nim1.png,na\u00efve painting of a dog\n"
    path = tmp_path / "pairs.csv"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index("\u00e9".encode("latin-1"))
    with pytest.raises(DataError) as err:
        open_dataset(f"csv:{path}")
    msg = str(err.value)
    assert str(path) in msg and f"byte offset {offset}" in msg and "?encoding=latin-1" in msg
    assert "iconv" in msg  # or convert it
    ds = open_dataset(f"csv:{path}?encoding=latin-1")
    assert ds.captions(0) == ["a caf\u00e9 by the sea"] and ds.captions(1) == ["na\u00efve painting of a dog"]
    assert "encoding=latin-1" in ds.name  # the canonical spec reopens the same captions
    assert path.read_bytes() == text.encode("latin-1")  # the input is never rewritten


def test_bom_is_accepted_in_csv_jsonl_and_coco(tmp_path):
    write_images(tmp_path, 2)
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.csv").write_bytes(bom + "image,caption\nim0.png,une caf\u00e9\n".encode())
    assert open_dataset(str(tmp_path / "a.csv")).captions(0) == ["une caf\u00e9"]
    (tmp_path / "a.jsonl").write_bytes(bom + json.dumps({"image": "im1.png", "caption": "x\u00e9"}).encode() + b"\n")
    assert open_dataset(str(tmp_path / "a.jsonl")).captions(0) == ["x\u00e9"]
    coco = {"images": [{"id": 1, "file_name": "im0.png"}],
            "annotations": [{"id": 5, "image_id": 1, "caption": "d\u00e9j\u00e0 vu"}]}
    (tmp_path / "caps.json").write_bytes(bom + json.dumps(coco, ensure_ascii=False).encode())
    assert open_dataset(f"coco:{tmp_path / 'caps.json'}").captions(0) == ["d\u00e9j\u00e0 vu"]


def test_latin1_jsonl_and_coco_name_the_byte_and_read_with_the_key(tmp_path):
    write_images(tmp_path, 1)
    line = json.dumps({"image": "im0.png", "caption": "\u00fcber"}, ensure_ascii=False) + "\n"
    (tmp_path / "p.jsonl").write_bytes(line.encode("cp1252"))
    at = line.encode("cp1252").index(b"\xfc")
    with pytest.raises(DataError, match=rf"p\.jsonl is not valid UTF-8 text at byte offset {at} "):
        open_dataset(str(tmp_path / "p.jsonl"))
    assert open_dataset(f"jsonl:{tmp_path / 'p.jsonl'}?encoding=cp1252").captions(0) == ["\u00fcber"]
    coco = json.dumps({"images": [{"id": 1, "file_name": "im0.png"}],
                       "annotations": [{"id": 1, "image_id": 1, "caption": "S\u00e3o Paulo"}]}, ensure_ascii=False)
    (tmp_path / "c.json").write_bytes(coco.encode("latin-1"))
    with pytest.raises(DataError, match="c.json is not valid UTF-8.*byte offset.*encoding=latin-1"):
        open_dataset(f"coco:{tmp_path / 'c.json'}")
    assert open_dataset(f"coco:{tmp_path / 'c.json'}?encoding=latin-1").captions(0) == ["S\u00e3o Paulo"]


def test_template_and_class_name_files_follow_the_spec_encoding(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        _png(tmp_path / "imgs" / cls / "a.png")
    (tmp_path / "templates.txt").write_bytes("une photo d'un {}, tr\u00e8s net.\n".encode("latin-1"))
    (tmp_path / "names.txt").write_bytes("chat \u00e9l\u00e9gant\nchien\n".encode("latin-1"))
    at = (tmp_path / "templates.txt").read_bytes().index(b"\xe8")
    with pytest.raises(DataError, match=rf"templates\.txt is not valid UTF-8 text at byte offset {at} "):
        open_dataset(f"folder:{tmp_path / 'imgs'}?templates={tmp_path / 'templates.txt'}")
    with pytest.raises(DataError, match=r"names\.txt is not valid UTF-8"):
        open_dataset(f"folder:{tmp_path / 'imgs'}?class_names={tmp_path / 'names.txt'}")
    ds = open_dataset(f"folder:{tmp_path / 'imgs'}?templates={tmp_path / 'templates.txt'}"
                      f"&class_names={tmp_path / 'names.txt'}&encoding=latin-1")
    assert ds.templates == ["une photo d'un {}, tr\u00e8s net."]
    assert ds.class_names == ["chat \u00e9l\u00e9gant", "chien"]


def test_unknown_encoding_name_is_a_clear_error(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "a.csv").write_text("image,caption\nim0.png,x\n")
    with pytest.raises(DataError, match="unknown text encoding 'klingon'.*latin-1"):
        open_dataset(f"csv:{tmp_path / 'a.csv'}?encoding=klingon")


def test_first_undecodable_byte_is_exact_across_read_chunks(tmp_path):
    # A multi-byte character split across the 1 MiB read boundary is valid; the bad byte after it is found.
    body = b"a" * ((1 << 20) - 1) + "\u00e9".encode() + b"b" * 10 + b"\xff" + b"c"
    path = tmp_path / "big.txt"
    path.write_bytes(body)
    assert first_undecodable_byte(path, "utf-8") == (len(body) - 2, b"\xff")
    with pytest.raises(DataError, match=f"byte offset {len(body) - 2}"):
        read_text(path)
    assert first_undecodable_byte(path, "latin-1") is None


def _wds_shard(path, n, *, txt_encoding="utf-8", end_marker=True):
    """A webdataset shard of n samples (png + txt); without the end marker it is cut at a member boundary."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            img = io.BytesIO()
            Image.new("RGB", (4, 4), (i, 0, 0)).save(img, format="PNG")
            for name, data in ((f"{i:05d}.png", img.getvalue()),
                               (f"{i:05d}.txt", f"sample {i} caf\u00e9".encode(txt_encoding))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        members_end = buf.tell()
    data = buf.getvalue()
    path.write_bytes(data if end_marker else data[:members_end])
    return members_end


def test_wds_txt_member_in_latin1_names_member_and_fix(tmp_path):
    _wds_shard(tmp_path / "s.tar", 2, txt_encoding="latin-1")
    with pytest.raises(DataError, match=r"s\.tar:00000\.txt is not UTF-8 text \(byte offset 12.*encoding=latin-1"):
        open_dataset(f"wds:{tmp_path / 's.tar'}")
    assert open_dataset(f"wds:{tmp_path / 's.tar'}?encoding=latin-1").captions(1) == ["sample 1 caf\u00e9"]


# --------------------------------------------------------------------------- class 2: COCO ids
def test_coco_mixed_type_ids_are_opaque_keys(tmp_path):
    write_images(tmp_path, 3)
    coco = {
        "images": [{"id": "a", "file_name": "im0.png"}, {"id": 2, "file_name": "im1.png"},
                   {"id": "2", "file_name": "im2.png"}],
        "annotations": [
            {"id": "z9", "image_id": "a", "caption": "third by id (a string id sorts after numbers)"},
            {"id": 7, "image_id": "a", "caption": "second by id"},
            {"id": 1.5, "image_id": "a", "caption": "first by id"},
            {"id": "k", "image_id": 2, "caption": "number two"},
            {"id": [3], "image_id": "2", "caption": "string two"},
        ],
    }
    (tmp_path / "caps.json").write_text(json.dumps(coco))
    ds = open_dataset(f"coco:{tmp_path / 'caps.json'}")
    assert ds.ids == ["im0.png", "im1.png", "im2.png"]
    assert ds.captions(0) == ["first by id", "second by id", "third by id (a string id sorts after numbers)"]
    # 2 and "2" are different ids: each image keeps only its own caption.
    assert ds.captions(1) == ["number two"] and ds.captions(2) == ["string two"]


def test_coco_unhashable_image_id_works_too(tmp_path):
    write_images(tmp_path, 1)
    coco = {"images": [{"id": {"x": 1}, "file_name": "im0.png"}],
            "annotations": [{"id": 1, "image_id": {"x": 1}, "caption": "dict id"}]}
    (tmp_path / "caps.json").write_text(json.dumps(coco))
    assert open_dataset(f"coco:{tmp_path / 'caps.json'}").captions(0) == ["dict id"]


# --------------------------------------------------------------------------- class 8: short shards
def test_wds_shard_cut_at_member_boundary_is_reported_and_strict_fails(tmp_path, caplog):
    (tmp_path / "shards").mkdir()
    _wds_shard(tmp_path / "shards" / "00000.tar", 6)
    _wds_shard(tmp_path / "shards" / "00001.tar", 6)
    whole = (tmp_path / "shards" / "00001.tar").read_bytes()
    # Cut shard 1 right after its 4th sample (8 members): tarfile itself reads on silently.
    with tarfile.open(tmp_path / "shards" / "00001.tar") as tf:
        members = tf.getmembers()
    cut = members[8].offset
    (tmp_path / "shards" / "00001.tar").write_bytes(whole[:cut])
    with tarfile.open(tmp_path / "shards" / "00001.tar") as tf:
        assert len(tf.getmembers()) == 8  # the bug: no error from tarfile

    with caplog.at_level(logging.WARNING, logger="alignprobe.data"):
        ds = open_dataset(f"wds:{tmp_path / 'shards'}")
    assert len(ds) == 10  # what remains is usable without --strict ...
    short = ds.describe()["short_shards"]
    assert list(short) == [str((tmp_path / "shards" / "00001.tar").resolve())]
    assert "end-of-archive" in short[next(iter(short))] and "4 samples read" in short[next(iter(short))]
    assert "00001.tar is short" in caplog.text  # ... and it is reported
    with pytest.raises(DataError, match=r"1 shard\(s\) are short.*00001\.tar.*--strict"):
        open_dataset(f"wds:{tmp_path / 'shards'}", strict=True)
    assert open_dataset(f"wds:{tmp_path / 'shards' / '00000.tar'}", strict=True).describe()["short_shards"] == {}


def test_wds_garbage_after_members_and_stats_count_are_short(tmp_path):
    end = _wds_shard(tmp_path / "g.tar", 3)
    data = (tmp_path / "g.tar").read_bytes()
    # A damaged header where the next member would start: tarfile stops quietly there too.
    (tmp_path / "g.tar").write_bytes(data[:end] + b"\x01" * 512 + data[end:])
    ds = open_dataset(f"wds:{tmp_path / 'g.tar'}")
    assert "unreadable data from byte" in ds.describe()["short_shards"][str((tmp_path / "g.tar").resolve())]

    _wds_shard(tmp_path / "00007.tar", 3)
    (tmp_path / "00007_stats.json").write_text(json.dumps({"successes": 5, "count": 6}))
    ds = open_dataset(f"wds:{tmp_path / '00007.tar'}")
    assert ds.describe()["short_shards"] == {str((tmp_path / "00007.tar").resolve()):
                                             "3 samples but 00007_stats.json counts 5"}
    with pytest.raises(DataError, match="00007_stats.json counts 5"):
        open_dataset(f"wds:{tmp_path / '00007.tar'}", strict=True)
    (tmp_path / "00007_stats.json").write_text(json.dumps({"successes": 3}))
    assert open_dataset(f"wds:{tmp_path / '00007.tar'}", strict=True).describe()["short_shards"] == {}
