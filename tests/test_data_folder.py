"""Labelled image folders (ImageNet layout), class-name files and templates."""
import json
import os
import pickle

import pytest
from PIL import Image

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.data.datasets import class_prompts
from alignprobe.probe.data.templates import clip_imagenet_templates


def draw(path, colour=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "imagenet"
    draw(root / "val" / "n02" / "b.JPEG", (0, 255, 0))
    draw(root / "val" / "n02" / "a.png", (255, 0, 0))
    draw(root / "val" / "n01" / "sub" / "c.jpg")
    (root / "val" / "n01" / "notes.txt").write_text("not an image")
    (root / "val" / "n03").mkdir()  # an empty class keeps its label id
    return root


def test_folder_ids_labels_class_names(imagenet):
    ds = open_dataset(f"folder:{imagenet}", split="val")
    assert ds.ids == ["n01/sub/c.jpg", "n02/a.png", "n02/b.JPEG"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.class_names == ["n01", "n02", "n03"] and ds.n_classes == 3
    assert not ds.has_captions and ds.captions(0) == []
    assert ds.load_image(1).getpixel((0, 0)) == (255, 0, 0)
    assert ds.name == f"folder:{imagenet}?split=val"
    assert len(ds.templates) == 80  # CLIP's ImageNet templates by default
    # a bare directory whose subdirectories are classes is a folder source
    assert open_dataset(str(imagenet / "val")).ids == ds.ids


def test_folder_fingerprint_stable_and_sensitive(imagenet):
    fp = open_dataset(f"folder:{imagenet}?split=val").fingerprint()
    assert open_dataset(f"folder:{imagenet}", split="val").fingerprint() == fp
    draw(imagenet / "val" / "n03" / "new.png")
    fp2 = open_dataset(f"folder:{imagenet}?split=val").fingerprint()
    assert fp2 != fp
    target = imagenet / "val" / "n03" / "new.png"
    Image.new("RGB", (7, 7)).save(target)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert open_dataset(f"folder:{imagenet}?split=val").fingerprint() != fp2


def test_missing_and_corrupt_image(imagenet):
    bad = imagenet / "val" / "n02" / "z.jpg"
    bad.write_bytes(b"garbage")
    ds = open_dataset(f"folder:{imagenet}?split=val")
    with pytest.raises(ImageLoadError) as exc:
        ds.load_image(ds.ids.index("n02/z.jpg"))
    assert exc.value.sample_id == "n02/z.jpg"
    os.remove(imagenet / "val" / "n02" / "a.png")
    with pytest.raises(ImageLoadError, match="file not found"):
        ds.load_image(ds.ids.index("n02/a.png"))


def test_class_names_files(imagenet, tmp_path):
    spec = f"folder:{imagenet}?split=val"
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"n01": "tench", "n02": "goldfish", "n03": "shark", "n99": "x"}))
    ds = open_dataset(spec, class_names=str(mapping))
    assert ds.class_names == ["tench", "goldfish", "shark"]
    synset = tmp_path / "LOC_synset_mapping.txt"
    synset.write_text("n02 goldfish, Carassius auratus\nn01 tench, Tinca tinca\nn03 great white shark\n")
    assert open_dataset(spec, class_names=str(synset)).class_names == [
        "tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]
    plain = tmp_path / "classnames.txt"
    plain.write_text("tench\ngoldfish\ngreat white shark\n")
    ds = open_dataset(spec, class_names=str(plain))
    assert ds.class_names[2] == "great white shark"
    prompts, idx = class_prompts(ds)
    assert prompts[80] == "a bad photo of a goldfish." and idx[80] == 1 and len(prompts) == 240
    mapping.write_text(json.dumps({"n01": "tench"}))
    with pytest.raises(DataError, match="no name for 2 of the 3 class folders: 'n02', 'n03'"):
        open_dataset(spec, class_names=str(mapping))
    with pytest.raises(DataError, match="has no labels"):
        open_dataset("wds:" + str(_one_shard(tmp_path)), class_names=str(plain))


def _one_shard(tmp_path):
    import io
    import tarfile
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    path = tmp_path / "one.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("x.png")
        info.size = len(buf.getvalue())
        tf.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_templates_builtin_and_custom_file(imagenet, tmp_path):
    clip = clip_imagenet_templates()
    assert len(clip) == 80 and len(set(clip)) == 80
    assert all(t.count("{}") == 1 for t in clip)
    assert clip[0] == "a bad photo of a {}." and clip[-1] == "a tattoo of the {}."
    custom = tmp_path / "t.txt"
    custom.write_text("# my prompts\na photo of a {}.\n\nan image of the {}, cropped.\n")
    ds = open_dataset(f"folder:{imagenet}?split=val", templates=str(custom))
    assert ds.templates == ["a photo of a {}.", "an image of the {}, cropped."]
    assert open_dataset(f"folder:{imagenet}?split=val", templates="simple").templates == [
        "a photo of a {}."]
    custom.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(DataError, match=r"'no placeholder here'.*t\.txt, line 2.*exactly one"):
        open_dataset(f"folder:{imagenet}?split=val", templates=str(custom))
    with pytest.raises(DataError, match="neither a built-in set"):
        open_dataset(f"folder:{imagenet}?split=val", templates=str(tmp_path / "nope.txt"))


def test_folder_errors_and_pickle(imagenet, tmp_path):
    with pytest.raises(DataError, match="split 'train' was requested.*subfolders: \\['val'\\]"):
        open_dataset(f"folder:{imagenet}", split="train")
    (tmp_path / "flat").mkdir()
    draw(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class subfolders"):
        open_dataset(f"folder:{tmp_path / 'flat'}")
    ds = open_dataset(f"folder:{imagenet}?split=val")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.ids == ds.ids and clone.load_image(2).tobytes() == ds.load_image(2).tobytes()
