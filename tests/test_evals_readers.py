"""Readers of Winoground, MMVP-VLM and segmentation sets, on tiny data in the official layouts."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from alignprobe.errors import DataError
from alignprobe.probe.data.builtin_sets import SHAPES, make_shapes
from alignprobe.probe.data.readers_mmvp import read_mmvp
from alignprobe.probe.data.readers_seg import open_segmentation
from alignprobe.probe.data.readers_winoground import read_winoground


def _img(path, colour, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_winoground(root, n=3):
    rows = []
    for k in range(n):
        rows.append({"id": k, "caption_0": f"a red thing {k}", "caption_1": f"a blue thing {k}",
                     "image_0": f"ex_{k}_img_0", "image_1": f"ex_{k}_img_1", "tag": "Object"})
        _img(root / "images" / f"ex_{k}_img_0.png", (200, 30, 30))
        _img(root / "images" / f"ex_{k}_img_1.png", (30, 30, 200))
    (root / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def write_mmvp(root, pairs):
    """pairs: [(type, id_a, statement_a, id_b, statement_b)], images coloured by id parity."""
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question ID", "Type", "Statement"])
        for t, qa, sa, qb, sb in pairs:
            w.writerow([qa, t, sa])
            w.writerow([qb, t, sb])
            for q in (qa, qb):
                _img(root / "MLLM_VLM Images" / t / f"{q}.jpg",
                     (200, 30, 30) if q % 2 else (30, 30, 200))


def test_winoground_official_layout(tmp_path):
    write_winoground(tmp_path)
    ex = read_winoground(tmp_path)
    assert [e.id for e in ex] == ["0", "1", "2"]
    assert ex[1].captions == ("a red thing 1", "a blue thing 1")
    assert ex[1].image_paths[1].endswith("images/ex_1_img_1.png")
    assert ex[1].extra == {"tag": "Object"}
    a, b = ex[0].load_images()
    assert a.getpixel((0, 0)) == (200, 30, 30) and b.getpixel((0, 0)) == (30, 30, 200)
    (tmp_path / "images" / "ex_2_img_1.png").unlink()
    with pytest.raises(DataError, match="ex_2_img_1.png"):
        read_winoground(tmp_path)
    with pytest.raises(DataError, match="examples.jsonl"):
        read_winoground(tmp_path / "nowhere")


def test_mmvp_official_layout_and_odd_id_is_the_first_image(tmp_path):
    write_mmvp(tmp_path, [("Color and Appearance", 1, "the flower is red", 2, "the flower is blue"),
                          ("Texts", 3, "some text", 4, "no text")])
    pairs = read_mmvp(tmp_path)
    assert [p.category for p in pairs] == ["Color and Appearance", "Texts"]
    assert pairs[0].targets == (0, 1) and pairs[1].targets == (0, 1)
    assert pairs[1].image_paths[0].endswith("MLLM_VLM Images/Texts/3.jpg")
    assert pairs[0].statements == ("the flower is red", "the flower is blue")
    with open(tmp_path / "Questions.csv", "a") as f:
        f.write("5,Texts,a dangling row\n")
    with pytest.raises(DataError, match="must be even"):
        read_mmvp(tmp_path)


def test_seg_voc_layout_reduces_zero_label(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("b\n")
    mask = np.array([[0, 1, 2], [255, 2, 1]], np.uint8)
    for i in ("a", "b"):
        Image.new("RGB", (3, 2)).save(tmp_path / "JPEGImages" / f"{i}.jpg")
        m = Image.fromarray(mask, mode="L").convert("P")
        m.save(tmp_path / "SegmentationClass" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("aeroplane\nbicycle,bike\n")
    ds = open_segmentation(f"seg:{tmp_path}?split=val")
    assert ds.ids == ["b"] and ds.class_queries == [["aeroplane"], ["bicycle", "bike"]]
    assert ds.load_mask(0).tolist() == [[255, 0, 1], [255, 1, 0]]
    raw = open_segmentation(f"seg:{tmp_path}?reduce_zero_label=0")
    assert len(raw) == 2
    with pytest.raises(DataError, match="holds label 2"):
        raw.load_mask(0)


def test_seg_ade_and_plain_layouts(tmp_path):
    ade = tmp_path / "ade"
    for sub in ("images/validation", "annotations/validation"):
        (ade / sub).mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(ade / "images/validation/x.jpg")
    Image.fromarray(np.full((4, 4), 3, np.uint8)).save(ade / "annotations/validation/x.png")
    (ade / "classes.txt").write_text("wall\nbuilding\nsky\n")
    assert open_segmentation(f"seg:{ade}").load_mask(0).max() == 2  # 3 -> 2
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "masks").mkdir()
    Image.new("RGB", (4, 4)).save(plain / "images/y.png")
    Image.fromarray(np.full((4, 4), 1, np.uint8)).save(plain / "masks/y.png")
    with pytest.raises(DataError, match="class-names file"):
        open_segmentation(f"seg:{plain}")
    (plain / "names.txt").write_text("bg\nthing\n")
    ds = open_segmentation(f"seg:{plain}?classes={plain / 'names.txt'}")
    assert ds.load_mask(0).max() == 1 and ds.num_classes == 2
    with pytest.raises(DataError, match="unknown key"):
        open_segmentation(f"seg:{plain}?colour=1")


def test_shapes_seg_masks_match_the_drawn_shapes():
    ds = open_segmentation("shapes-seg:test?n=60&size=32")
    shapes = make_shapes(split="test", n=60, size=32)
    assert ds.ids == shapes.ids and ds.class_names == ["background", *SHAPES]
    for i in range(5):
        img = np.asarray(ds.load_image(i)).astype(int)
        assert np.array_equal(img, np.asarray(shapes.load_image(i)))
        mask = ds.load_mask(i)
        label = 1 + int(shapes.labels[i])
        assert set(np.unique(mask)) == {0, label}
        # shape pixels differ from the pale background, background pixels do not
        bg = img[mask == 0].mean(0)
        assert np.abs(img[mask == label] - bg).sum(1).mean() > 60
        assert np.abs(img[mask == 0] - bg).sum(1).mean() < 30


def test_shapes_seg_object_only_protocol_ignores_the_background():
    full = open_segmentation("shapes-seg:test?n=60&size=32")
    objects = open_segmentation("shapes-seg:test?n=60&size=32&reduce_zero_label=1")
    assert objects.class_names == list(SHAPES) and objects.num_classes == 6
    assert objects.name.endswith("reduce_zero_label=1")
    for i in range(3):
        m, o = full.load_mask(i), objects.load_mask(i)
        assert np.array_equal(o == 255, m == 0)
        assert np.array_equal(o[m > 0], m[m > 0] - 1)
    with pytest.raises(DataError, match="reduce_zero_label must be 0 or 1"):
        open_segmentation("shapes-seg:test?reduce_zero_label=maybe")
