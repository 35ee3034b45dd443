"""Train/test image overlap: same resolved path or same content, one clear error (COCO train2017 vs Karpathy test)."""
import json
import os
import shutil

import pytest
from PIL import Image

from alignprobe.probe.data.overlap import TrainTestOverlapError, check_no_overlap, find_overlap
from alignprobe.probe.data.spec import open_dataset


def draw(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (7, 5), colour).save(path, quality=95)


@pytest.fixture
def coco(tmp_path):
    """COCO train2017 (official captions file) and a Karpathy file whose test images are renamed copies."""
    images, anns = [], []
    for k in range(1, 7):
        name = f"{k:012d}.jpg"
        draw(tmp_path / "train2017" / name, (k * 30, 255 - k * 30, k * 7))
        images.append({"id": k, "file_name": name})
        anns.append({"id": 100 + k, "image_id": k, "caption": f"train image {k}"})
    train_file = tmp_path / "annotations" / "captions_train2017.json"
    train_file.parent.mkdir()
    train_file.write_text(json.dumps({"images": images, "annotations": anns}))
    # Karpathy test: images 2 and 5 of train2017 under their 2014 names, and one image only in val2014
    kimgs = []
    for k, src in ((2, "train2017"), (5, "train2017"), (9, None)):
        name = f"COCO_val2014_{k:012d}.jpg"
        if src:
            (tmp_path / "val2014").mkdir(exist_ok=True)
            shutil.copy(tmp_path / src / f"{k:012d}.jpg", tmp_path / "val2014" / name)
        else:
            draw(tmp_path / "val2014" / name, (1, 2, 3))
        kimgs.append({"filepath": "val2014", "filename": name, "split": "test", "cocoid": k,
                      "sentences": [{"raw": f"test {k} caption {j}"} for j in range(5)]})
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"dataset": "coco", "images": kimgs}))
    return tmp_path, train_file, karpathy


def test_coco_train2017_holds_the_karpathy_test_images(coco):
    root, train_file, karpathy = coco
    train = open_dataset(f"coco:{train_file}?images={root / 'train2017'}")
    test = open_dataset(f"coco:{karpathy}?split=test")
    ov = find_overlap(train, test)
    assert ov.n == 2 and ov.by_content == 2 and ov.by_path == 0
    assert ov.examples[0] == ("val2014/COCO_val2014_000000000002.jpg", "000000000002.jpg")
    with pytest.raises(TrainTestOverlapError) as err:
        check_no_overlap(train, test, train_role="--pairs", test_role="--retrieval")
    msg = str(err.value)
    assert "2 of the 3 --retrieval images" in msg and "COCO_val2014_000000000002.jpg" in msg
    assert "--allow-overlap" in msg and "0 by path, 2 by content" in msg
    # allowed: returned for the record instead of raised
    ov = check_no_overlap(train, test, allow=True)
    rec = ov.to_record(allowed=True)
    assert rec["n"] == 2 and rec["allowed"] is True and rec["n_test"] == 3
    assert json.loads(json.dumps(rec)) == rec
    # paths only: the renamed copies are not found
    assert find_overlap(train, test, by_content=False).n == 0


def test_same_resolved_path_through_a_symlink(tmp_path):
    for k in range(3):
        draw(tmp_path / "imgs" / f"{k}.png", (k * 80, 0, 0))
    os.symlink(tmp_path / "imgs", tmp_path / "link")
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"imgs/{k}.png,c {k}\n" for k in range(3)))
    (tmp_path / "test.csv").write_text("image,caption\nlink/1.png,x\n")
    train = open_dataset(f"csv:{tmp_path / 'pairs.csv'}")
    test = open_dataset(f"csv:{tmp_path / 'test.csv'}")
    ov = find_overlap(train, test, by_content=False)
    assert ov.n == 1 and ov.by_path == 1 and ov.examples == [("link/1.png", "imgs/1.png")]


def test_equal_size_different_content_is_not_overlap_and_only_size_matches_are_hashed(tmp_path, monkeypatch):
    # byte strings of one length: the size prefilter passes them, the hash tells them apart
    for split, payload in (("a", b"\x01" * 64), ("b", b"\x02" * 64)):
        p = tmp_path / split / "cls" / "x.jpg"
        p.parent.mkdir(parents=True)
        p.write_bytes(payload)
    (tmp_path / "b" / "cls" / "other_size.jpg").write_bytes(b"\x03" * 65)
    a, b = open_dataset(f"folder:{tmp_path / 'a'}"), open_dataset(f"folder:{tmp_path / 'b'}")
    from alignprobe.probe.data import overlap

    hashed = []
    real = overlap._digest
    monkeypatch.setattr(overlap, "_digest", lambda data: hashed.append(len(data)) or real(data))
    assert find_overlap(a, b).n == 0
    assert sorted(hashed) == [64, 64]  # the 65-byte file has no size match: never read


def test_in_memory_sets_compare_pixels():
    train, test = open_dataset("shapes:train"), open_dataset("shapes:test")
    assert find_overlap(train, test).n == 0  # the built-in splits are disjoint
    same = find_overlap(open_dataset("digits:test"), open_dataset("digits:test"))
    assert same.n == same.n_test and same.by_content == same.n_test
