"""The data readers on input that is easy to get silently wrong: 16-bit images, symlink loops in a
folder, float IDX labels, repeated columns, webdataset samples without an image or with text in
UTF-16, COCO / Karpathy oddities, masks of another size."""
import codecs
import io
import json
import os
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.datasets import to_rgb
from alignprobe.probe.data.readers_seg import read_seg_dir
from alignprobe.probe.data.spec import open_dataset


def draw(path, size=(8, 6), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def png_bytes(colour=(10, 200, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):  # ("symlink" | "hardlink", target)
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tf.addfile(info)
                continue
            data = data.encode() if isinstance(data, str) else data
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- high bit depth
def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    grey16 = np.array([[0, 257, 32896], [50000, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "cls" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")
    ds = open_dataset(f"folder:{tmp_path}")
    rgb = np.asarray(ds.load_image(0))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.rint(grey16 / 257).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_to_rgb_modes():
    i32 = Image.fromarray(np.array([[0, 65535], [32768, 128]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(np.asarray(to_rgb(i32))[..., 1], [[0, 255], [128, 0]])
    wide = Image.fromarray(np.array([[-5, 2**31 - 1]], dtype=np.int32), mode="I")  # beyond 16 bits
    np.testing.assert_array_equal(np.asarray(to_rgb(wide))[..., 0], [[0, 255]])
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(np.asarray(to_rgb(unit))[..., 0], [[0, 128, 255]])
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(rgb).getpixel((0, 0)) == (1, 2, 3)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)


# --------------------------------------------------------------------------- folder: symlinks
def _tree(tmp_path):
    for cls, n in (("cat", 2), ("dog", 3)):
        for k in range(n):
            draw(tmp_path / "data" / cls / f"{k}.png")
    return tmp_path / "data"


def test_symlink_loop_in_a_folder_is_refused_not_multiplied(tmp_path):
    root = _tree(tmp_path)
    os.symlink("..", root / "dog" / "loop")
    with pytest.raises(DataError, match=r"dog/loop is a symbolic link back to .*symlink loop"):
        open_dataset(f"folder:{root}")


def test_symlink_to_an_ancestor_and_a_second_link_to_one_directory_are_refused(tmp_path):
    root = _tree(tmp_path)
    os.symlink("../../..", root / "cat" / "up")
    with pytest.raises(DataError, match="symlink loop"):
        open_dataset(f"folder:{root}")
    os.unlink(root / "cat" / "up")
    os.symlink("../dog", root / "cat" / "also")  # dog's images would count twice, once as cats
    with pytest.raises(DataError, match=r"data/dog is reached twice, as .*cat/also and as"):
        open_dataset(f"folder:{root}")


def test_symlink_to_a_directory_outside_is_followed_once(tmp_path):
    root = _tree(tmp_path)
    draw(tmp_path / "extra_dogs" / "x.png")
    os.symlink(tmp_path / "extra_dogs", root / "dog" / "more")
    ds = open_dataset(f"folder:{root}")
    assert len(ds) == 6 and ds.ids.count("dog/more/x.png") == 1
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 1]


# --------------------------------------------------------------------------- IDX float labels
def _write_idx(path, array, code):
    dtype = {0x08: ">u1", 0x0D: ">f4", 0x0E: ">f8"}[code]
    array = np.asarray(array)
    path.write_bytes(bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(dtype).tobytes())


@pytest.mark.parametrize("code", [0x0D, 0x0E])
def test_float_idx_labels_must_be_whole_numbers(tmp_path, code):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", [1.0, 0.9, 2.0], code)
    with pytest.raises(DataError, match=r"label 1 is 0\.(9|89)\d*, not a whole number"):
        open_dataset(f"idx:{tmp_path}?split=train")
    _write_idx(tmp_path / "train-labels-idx1-ubyte", [1.0, float("nan"), 2.0], code)
    with pytest.raises(DataError, match="not a whole number"):
        open_dataset(f"idx:{tmp_path}?split=train")
    _write_idx(tmp_path / "train-labels-idx1-ubyte", [1.0, 0.0, 2.0], code)
    assert open_dataset(f"idx:{tmp_path}?split=train").labels.tolist() == [1, 0, 2]


# --------------------------------------------------------------------------- repeated columns
def test_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    draw(tmp_path / "a.png")
    f = tmp_path / "p.csv"
    f.write_text("image,caption,caption\na.png,first,second\n")
    with pytest.raises(DataError, match="column 'caption' is named twice"):
        open_dataset(f"csv:{f}")
    t = tmp_path / "p.tsv"
    t.write_text("image\tlabel\tcaption\tlabel\na.png\t1\tx\t2\n")
    with pytest.raises(DataError, match="column 'label' is named twice"):
        open_dataset(f"tsv:{t}")


def test_jsonl_object_naming_a_key_twice_is_an_error(tmp_path):
    draw(tmp_path / "a.png")
    f = tmp_path / "p.jsonl"
    f.write_text('{"image": "a.png", "caption": "first", "caption": "second"}\n')
    with pytest.raises(DataError, match=r"line 1 .*key 'caption' appears twice"):
        open_dataset(f"jsonl:{f}")


def test_non_string_image_path_is_called_what_it_is(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"image": 5, "caption": "five"}\n')
    with pytest.raises(DataError, match=r"is a number 5, not a string"):
        open_dataset(f"jsonl:{f}")
    f.write_text('{"image": ["a.png"], "caption": "five"}\n')
    with pytest.raises(DataError, match=r"is a list \['a.png'\], not a string"):
        open_dataset(f"jsonl:{f}")
    f.write_text('{"image": "  ", "caption": "five"}\n')
    with pytest.raises(DataError, match="empty image path"):
        open_dataset(f"jsonl:{f}")


# --------------------------------------------------------------------------- webdataset
def test_wds_samples_without_an_image_are_skipped_rows_named_and_refused_under_strict(tmp_path):
    shard = write_tar(tmp_path / "00000.tar", [
        ("a.png", png_bytes()), ("a.txt", "a green card"),
        ("b.txt", "caption only"),                                  # no image at all
        ("c1.png", png_bytes()), ("c2.txt", "keys do not match"),  # mismatched keys: c1 kept, c2 skipped
        ("d.png", ("symlink", "a.png")), ("d.txt", "a linked image"),  # link member
    ])
    ds = open_dataset(f"wds:{shard}")
    assert ds.ids == ["a", "b", "c1", "c2", "d"]
    d = ds.describe()
    assert d["n_skipped"] == 3 and set(d["skipped_samples"]) == {"b", "c2", "d"}
    assert "tar link" in d["skipped_samples"]["d"] and "only .txt" in d["skipped_samples"]["b"]
    assert ds.load_image(0).size == (6, 4) and ds.load_image(2).size == (6, 4)
    for i in (1, 3, 4):
        with pytest.raises(ImageLoadError) as exc:
            ds.load_image(i)
        assert exc.value.sample_id == ds.ids[i]
    with pytest.raises(DataError, match=r"3 sample\(s\) have no image member: 'b' .*'c2'.*'d'"):
        open_dataset(f"wds:{shard}", strict=True)


def test_wds_imageless_samples_are_logged(tmp_path, caplog):
    shard = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()), ("z.txt", "lonely")])
    with caplog.at_level("WARNING", logger="alignprobe.data"):
        open_dataset(f"wds:{shard}")
    assert "1 sample(s) have no image member" in caplog.text and "'z'" in caplog.text


def test_wds_second_member_of_one_kind_is_an_error(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()), ("a.txt", "first"), ("a.txt", "second")])
    with pytest.raises(DataError, match=r"sample 'a' has two \.txt members"):
        open_dataset(f"wds:{shard}")
    shard = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()), ("a.PNG", png_bytes((1, 1, 1)))])
    with pytest.raises(DataError, match=r"two \.png members"):
        open_dataset(f"wds:{shard}")


def test_wds_labels_go_through_the_values_present(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()), ("a.cls", str(10**12)),
                                           ("b.png", png_bytes()), ("b.cls", "4")])
    ds = open_dataset(f"wds:{shard}")
    assert ds.labels.tolist() == [1, 0] and ds.class_keys == ["4", str(10**12)]


# --------------------------------------------------------------------------- COCO / Karpathy
def test_official_coco_file_without_annotations_says_what_it_is(tmp_path):
    f = tmp_path / "image_info_test2017.json"
    f.write_text(json.dumps({"info": {}, "images": [{"id": 1, "file_name": "1.jpg", "width": 4}]}))
    with pytest.raises(DataError) as exc:
        open_dataset(f"coco:{f}")
    assert "official COCO file" in str(exc.value) and "no 'annotations'" in str(exc.value)
    assert "Karpathy-format file holding several splits" not in str(exc.value)


def test_images_without_split_or_annotations(tmp_path):
    f = tmp_path / "odd.json"
    f.write_text(json.dumps({"images": [{"filename": "1.jpg", "sentences": []}]}))
    with pytest.raises(DataError, match="no image has a 'split'"):
        open_dataset(f"coco:{f}")


def test_non_object_in_karpathy_images_list(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": []}, "b.jpg"]}))
    with pytest.raises(DataError, match=r"images\[1\] is a string \('b.jpg'\), not an object"):
        open_dataset(f"coco:{f}?split=test")


def test_integer_image_paths_in_caption_json(tmp_path):
    f = tmp_path / "dataset_flickr.json"
    f.write_text(json.dumps({"images": [{"filename": 7, "split": "test", "sentences": [{"raw": "x"}]}]}))
    with pytest.raises(DataError, match=r"images\[0\] 'filename' is a number \(7\), not a string"):
        open_dataset(f"coco:{f}?split=test")
    g = tmp_path / "captions_val2017.json"
    g.write_text(json.dumps({"images": [{"id": 1, "file_name": 139}],
                             "annotations": [{"image_id": 1, "id": 1, "caption": "c"}]}))
    with pytest.raises(DataError, match=r"'file_name' is a number \(139\), not a string"):
        open_dataset(f"coco:{g}")


# --------------------------------------------------------------------------- segmentation masks
def test_mask_of_another_size_names_both_files(tmp_path):
    root = tmp_path / "seg"
    draw(root / "images" / "x.png", size=(8, 6))
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((5, 8), np.uint8), mode="L").save(root / "masks" / "x.png")
    (root / "classes.txt").write_text("background\nthing\n")
    ds = read_seg_dir(root)
    with pytest.raises(DataError) as exc:
        ds.load_mask(0)
    msg = str(exc.value)
    assert str(root / "masks" / "x.png") in msg and str(root / "images" / "x.png") in msg
    assert "8 x 5" in msg and "8 x 6" in msg
    Image.fromarray(np.ones((6, 8), np.uint8), mode="L").save(root / "masks" / "x.png")
    assert ds.load_mask(0).shape == (6, 8)


def test_imageless_wds_samples_never_count_as_overlap(tmp_path):
    from alignprobe.probe.data.overlap import find_overlap

    train = write_tar(tmp_path / "train.tar", [("a.png", png_bytes((1, 2, 3))), ("t.txt", "caption only")])
    test = write_tar(tmp_path / "test.tar", [("b.png", png_bytes((1, 2, 3))), ("u.txt", "caption only too")])
    found = find_overlap(open_dataset(f"wds:{train}"), open_dataset(f"wds:{test}"))
    assert found.test_rows == [0]  # the same image; the two image-less samples do not "match"


def test_wds_text_members_in_utf16(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()),
                                           ("a.txt", codecs.BOM_UTF16_LE + "un café".encode("utf-16-le"))])
    assert open_dataset(f"wds:{shard}").captions(0) == ["un café"]
    shard = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()), ("a.txt", "un café".encode("utf-16-le"))])
    with pytest.raises(DataError, match=r"\?encoding=utf-16-le' \(it looks like UTF-16-LE\)"):
        open_dataset(f"wds:{shard}")
