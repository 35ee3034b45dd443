"""Text encodings of the files the data readers open: CSV / JSONL / COCO captions, class-name and
template files, Winoground, MMVP and segmentation class files, with or without a byte-order mark
(UTF-8, UTF-16, UTF-32); an undecodable byte is named by file and offset
with the `?encoding=` fix, and the spec key reads the file in that encoding."""
from __future__ import annotations

import codecs
import json

import numpy as np
import pytest
from PIL import Image

from alignprobe.errors import DataError
from alignprobe.io import first_undecodable_byte, read_text
from alignprobe.probe.data.readers_mmvp import read_mmvp
from alignprobe.probe.data.readers_seg import read_class_queries
from alignprobe.probe.data.readers_winoground import read_winoground
from alignprobe.probe.data.spec import open_dataset
from helpers import write_images


def draw(path, size=(8, 6), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


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
        draw(tmp_path / "imgs" / cls / "a.png")
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


def test_utf16_with_a_bom_is_read(tmp_path):
    draw(tmp_path / "a.png")
    text = "image,caption,label\na.png,un café,chat\n"
    for codec, bom in (("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE)):
        (tmp_path / "p.csv").write_bytes(bom + text.encode(codec))
        ds = open_dataset(f"csv:{tmp_path / 'p.csv'}")
        assert ds.captions(0) == ["un café"] and ds.class_names == ["chat"]
    names = tmp_path / "names.txt"
    names.write_bytes(codecs.BOM_UTF16_LE + "chat a cat\n".encode("utf-16-le"))
    assert open_dataset(f"csv:{tmp_path / 'p.csv'}?class_names={names}").class_names == ["a cat"]
    (tmp_path / "u32.txt").write_bytes(codecs.BOM_UTF32_LE + "ok".encode("utf-32-le"))
    assert read_text(tmp_path / "u32.txt") == "ok"


def test_utf16_without_a_bom_is_told_utf16_not_latin1(tmp_path):
    f = tmp_path / "p.csv"
    f.write_bytes("image,caption\na.png,café\n".encode("utf-16-le"))
    with pytest.raises(DataError) as exc:
        open_dataset(f"csv:{f}")
    assert "UTF-16-LE" in str(exc.value) and "?encoding=utf-16-le" in str(exc.value)
    assert "iconv -f utf-16-le" in str(exc.value) and "latin1" not in str(exc.value)


def test_latin1_gets_the_latin1_fix(tmp_path):
    f = tmp_path / "p.csv"
    f.write_bytes("image,caption\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"byte offset 23.*encoding=latin-1"):
        open_dataset(f"csv:{f}")


def test_latin1_winoground_mmvp_and_class_files_are_clear_errors(tmp_path):
    wino = tmp_path / "wino"
    (wino / "images").mkdir(parents=True)
    for k in (0, 1):
        draw(wino / "images" / f"ex_0_img_{k}.png")
    line = {"id": 0, "caption_0": "un caf\xe9", "caption_1": "x", "image_0": "ex_0_img_0", "image_1": "ex_0_img_1"}
    (wino / "examples.jsonl").write_bytes((json.dumps(line, ensure_ascii=False) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"examples.jsonl is not valid UTF-8 text at byte offset"):
        read_winoground(wino)
    assert read_winoground(wino, encoding="latin-1")[0].captions[0] == "un caf\xe9"

    mmvp = tmp_path / "mmvp"
    for q in (1, 2):
        draw(mmvp / "MLLM_VLM Images" / "Colour" / f"{q}.jpg")
    (mmvp / "Questions.csv").write_bytes("Question ID,Type,Statement\n1,Colour,caf\xe9 red\n2,Colour,blue\n"
                                         .encode("latin-1"))
    with pytest.raises(DataError, match=r"Questions.csv is not valid UTF-8 text"):
        read_mmvp(mmvp)
    assert read_mmvp(mmvp, encoding="latin-1")[0].statements[0] == "caf\xe9 red"

    classes = tmp_path / "classes.txt"
    classes.write_bytes("background\ncaf\xe9, coffee shop\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"classes.txt is not valid UTF-8 text"):
        read_class_queries(classes)
    assert read_class_queries(classes, "latin-1")[1] == ["caf\xe9", "coffee shop"]


def test_segmentation_spec_takes_an_encoding(tmp_path):
    from alignprobe.probe.data.readers_seg import open_segmentation

    root = tmp_path / "seg"
    draw(root / "images" / "x.png", size=(4, 4))
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(root / "masks" / "x.png")
    (root / "classes.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        open_segmentation(f"seg:{root}")
    assert open_segmentation(f"seg:{root}?encoding=latin-1").class_names == ["caf\xe9"]
    with pytest.raises(DataError, match="unknown text encoding"):
        open_segmentation(f"seg:{root}?encoding=klingon")
