"""CLIP ImageNet class names for wnid folders, per-dataset template sets, warnings for id-like names."""
import logging

import pytest
from PIL import Image

from alignprobe.errors import DataError
from alignprobe.probe.data.datasets import class_prompts
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.data.templates import (
    DATASET_TEMPLATE_SETS,
    clip_imagenet_templates,
    default_class_names,
    imagenet_class_names,
    imagenet_classes,
    load_templates,
)


def draw(path, colour=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)


def test_imagenet_table_is_the_clip_list_in_wnid_order():
    rows = imagenet_classes()
    wnids = [w for w, _ in rows]
    assert len(rows) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    names = imagenet_class_names()
    # spot checks against CLIP's list (label order = sorted wnids)
    assert rows[0] == ("n01440764", "tench") and rows[1] == ("n01443537", "goldfish")
    assert names[207] == "Golden Retriever" and names[999] == "toilet paper"
    assert "n02084071" not in dict(rows)


def test_wnid_folders_get_clip_names(tmp_path, caplog):
    root = tmp_path / "imagenet" / "val"
    draw(root / "n01440764" / "ILSVRC2012_val_00000293.JPEG")
    draw(root / "n01443537" / "a.JPEG", (9, 9, 9))
    draw(root / "n02099601" / "b.JPEG", (99, 9, 9))
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(f"folder:{tmp_path / 'imagenet'}", split="val")
    assert ds.class_keys == ["n01440764", "n01443537", "n02099601"]
    assert ds.class_names == ["tench", "goldfish", "Golden Retriever"]
    assert ds.labels.tolist() == [0, 1, 2]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    texts, _ = class_prompts(ds)
    assert "a bad photo of a tench." in texts


def test_id_like_names_without_a_table_match_warn(tmp_path, caplog):
    draw(tmp_path / "set" / "n99999991" / "a.png")
    draw(tmp_path / "set" / "n01440764" / "b.png")
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(f"folder:{tmp_path / 'set'}")
    assert ds.class_names == ["n01440764", "n99999991"]  # kept: only some are ImageNet-1k wnids
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "look like ids" in text and "'n99999991'" in text and "class_names=FILE" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert default_class_names(["cat", "dog"], "x") == ["cat", "dog"]
        assert default_class_names(["001", "002"], "x") == ["001", "002"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_dataset_template_sets_by_name(tmp_path):
    assert set(DATASET_TEMPLATE_SETS) == {"imagenet", "cifar10", "cifar100", "food101", "pets", "cars",
                                          "aircraft", "dtd", "flowers", "sun397", "caltech101"}
    sizes = {name: len(load_templates(name)) for name in DATASET_TEMPLATE_SETS}
    assert sizes == {"imagenet": 80, "cifar10": 18, "cifar100": 18, "food101": 1, "pets": 1, "cars": 8,
                     "aircraft": 2, "dtd": 8, "flowers": 1, "sun397": 2, "caltech101": 34}
    assert load_templates("imagenet") == list(clip_imagenet_templates())
    assert load_templates("food101") == ["a photo of {}, a type of food."]
    for name in DATASET_TEMPLATE_SETS:
        assert all(t.format("x").count("x") >= 1 and "{}" in t for t in load_templates(name))
    draw(tmp_path / "pets" / "abyssinian" / "a.png")
    draw(tmp_path / "pets" / "beagle" / "b.png")
    ds = open_dataset(f"folder:{tmp_path / 'pets'}?templates=pets")
    assert ds.templates == ["a photo of a {}, a type of pet."]
    texts, _ = class_prompts(ds)
    assert texts == ["a photo of a abyssinian, a type of pet.", "a photo of a beagle, a type of pet."]
    with pytest.raises(DataError, match="neither a built-in set"):
        load_templates("imagenet21k")
