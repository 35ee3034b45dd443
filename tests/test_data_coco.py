"""COCO official and Karpathy-format caption files."""
import json
import pickle

import pytest
from PIL import Image

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.data.datasets import flatten_captions
from helpers import write_images


def draw(path, colour=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (5, 5), colour).save(path)


@pytest.fixture
def coco(tmp_path):
    draw(tmp_path / "val2017" / "000001.jpg", (200, 10, 10))
    draw(tmp_path / "val2017" / "000002.jpg")
    ann = {
        "images": [{"id": 2, "file_name": "000002.jpg"}, {"id": 1, "file_name": "000001.jpg"}],
        "annotations": [
            {"id": 12, "image_id": 1, "caption": "second caption of one "},
            {"id": 11, "image_id": 1, "caption": "first caption of one"},
            {"id": 20, "image_id": 2, "caption": "the only caption of two"},
        ],
    }
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(ann))
    return tmp_path, path


def test_official_coco(coco):
    root, path = coco
    ds = open_dataset(f"coco:{path}?images={root / 'val2017'}")
    assert ds.ids == ["000002.jpg", "000001.jpg"]
    assert ds.captions(1) == ["first caption of one", "second caption of one"]
    assert ds.captions(0) == ["the only caption of two"]
    texts, rows = flatten_captions(ds)
    assert rows.tolist() == [0, 1, 1]
    assert ds.load_image(1).getpixel((0, 0))[0] > 150 and ds.labels is None
    assert ds.fingerprint() == open_dataset(f"coco:{path}?images={root / 'val2017'}").fingerprint()
    # the split of an official file is its file name; a contradicting split is refused
    ok = open_dataset(f"coco:{path}?images={root / 'val2017'}", split="val2017")
    assert ok.ids == ds.ids
    with pytest.raises(DataError, match="does not mention 'train2017'"):
        open_dataset(f"coco:{path}?images={root / 'val2017'}", split="train2017")


def test_official_coco_wrong_default_root_is_explained(coco):
    _, path = coco
    with pytest.raises(DataError, match=r"not under .*annotations.*\?images=DIR"):
        open_dataset(f"coco:{path}")


@pytest.fixture
def karpathy(tmp_path):
    imgs = []
    for k, split in enumerate(["train", "restval", "val", "test", "test"]):
        fp = "val2014" if split != "train" else "train2014"
        name = f"COCO_{k}.jpg"
        if k != 4:  # the last test image is missing on disk
            draw(tmp_path / fp / name, (k * 40, 0, 0))
        imgs.append({"filepath": fp, "filename": name, "split": split, "cocoid": k,
                     "sentences": [{"raw": f"image {k} caption {j}", "tokens": []}
                                   for j in range(5)]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": imgs}))
    return tmp_path, path


def test_karpathy_requires_and_applies_split(karpathy):
    root, path = karpathy
    with pytest.raises(DataError) as exc:
        open_dataset(f"coco:{path}")
    msg = str(exc.value)
    assert "name one with ?split=test" in msg and "test (2)" in msg and "restval (1)" in msg
    test = open_dataset(f"coco:{path}?split=test")
    assert test.ids == ["val2014/COCO_3.jpg", "val2014/COCO_4.jpg"]
    assert test.captions(0) == [f"image 3 caption {j}" for j in range(5)]
    assert test.name == f"coco:{path}?split=test"
    with pytest.raises(ImageLoadError):
        test.load_image(1)
    with pytest.raises(DataError, match="1 of 2 image files"):
        open_dataset(f"coco:{path}", split="test", strict=True)
    both = open_dataset(f"coco:{path}?split=train+restval")
    assert both.ids == ["train2014/COCO_0.jpg", "val2014/COCO_1.jpg"]
    assert both.fingerprint() != test.fingerprint()
    with pytest.raises(DataError, match="unknown split 'dev'.*restval \\(1\\), test \\(2\\)"):
        open_dataset(f"coco:{path}", split="dev")
    assert pickle.loads(pickle.dumps(test)).captions(0) == test.captions(0)


def test_flickr_style_without_filepath(tmp_path):
    draw(tmp_path / "flickr" / "1.jpg")
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": [
        {"filename": "1.jpg", "split": "test", "sentences": [{"raw": "a man."}, {"raw": "a guy."}]},
        {"filename": "2.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}))
    ds = open_dataset(f"coco:{path}?images={tmp_path / 'flickr'}&split=test")
    assert ds.ids == ["1.jpg"] and ds.captions(0) == ["a man.", "a guy."]
    assert ds.load_image(0).size == (5, 5)


# --------------------------------------------------------------------------- ids of mixed types are opaque keys
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
