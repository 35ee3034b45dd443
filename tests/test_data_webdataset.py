"""webdataset / img2dataset tar shards read by recorded offsets."""
import io
import json
import logging
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.data.readers_webdataset import expand_braces


def png(colour, fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            if isinstance(data, str):
                data = data.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def shard0():
    return [
        ("000000.jpg", png((250, 0, 0), "JPEG")),
        ("000000.txt", "a red card"),
        ("000000.json", json.dumps({"caption": "ignored, .txt wins", "url": "http://x",
                                    "extra_captions": ["crimson card", "red thing"]})),
        ("000001.png", png((0, 0, 255))),
        ("000001.json", json.dumps({"caption": "a blue card", "status": "success"})),
        ("000002.txt", "caption without an image is skipped"),
        ("000003.webp", png((0, 255, 0), "WEBP")),
    ]


def test_reads_images_captions_and_skips_imageless(tmp_path):
    write_tar(tmp_path / "00000.tar", shard0())
    ds = open_dataset(f"wds:{tmp_path / '00000.tar'}")
    # the caption-only sample stays a row whose image cannot load: encoding skips and counts it
    assert ds.ids == ["000000", "000001", "000002", "000003"]
    assert ds.captions(0) == ["a red card", "crimson card", "red thing"]
    assert ds.captions(1) == ["a blue card"] and ds.captions(3) == []
    assert ds.has_captions and ds.labels is None
    r, g, b = ds.load_image(0).getpixel((2, 2))
    assert r > 200 and g < 40 and b < 40
    assert ds.load_image(1).getpixel((0, 0)) == (0, 0, 255)
    assert ds.load_image(3).mode == "RGB"
    with pytest.raises(ImageLoadError, match="no image member"):
        ds.load_image(2)
    d = ds.describe()
    assert d["n_skipped"] == 1 and d["n_shards"] == 1 and d["n"] == 4
    assert list(d["skipped_samples"]) == ["000002"]


def test_directory_brace_and_glob_specs_agree(tmp_path):
    write_tar(tmp_path / "00000.tar", shard0())
    write_tar(tmp_path / "00001.tar", [("100000.png", png((1, 1, 1))), ("100000.txt", "dark")])
    by_dir = open_dataset(str(tmp_path))  # a directory of .tar files is recognised
    by_brace = open_dataset(f"wds:{tmp_path}/{{00000..00001}}.tar")
    by_glob = open_dataset(f"wds:{tmp_path}/0000?.tar")
    assert by_dir.kind == "wds"
    assert by_dir.ids == by_brace.ids == by_glob.ids == ["000000", "000001", "000002", "000003", "100000"]
    assert by_dir.fingerprint() == by_brace.fingerprint() == by_glob.fingerprint()
    assert by_brace.captions(4) == ["dark"]
    with pytest.raises(DataError, match="00002.tar does not exist"):
        open_dataset(f"wds:{tmp_path}/{{00000..00002}}.tar")


def test_expand_braces():
    assert expand_braces("s/{00008..00010}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_fingerprint_stable_and_changes_when_shard_changes(tmp_path):
    t = tmp_path / "00000.tar"
    write_tar(t, shard0())
    fp = open_dataset(f"wds:{t}").fingerprint()
    assert open_dataset(f"wds:{t}").fingerprint() == fp
    members = shard0()
    members[0] = ("000000.jpg", png((240, 0, 0), "JPEG"))
    write_tar(t, members)
    st = os.stat(t)
    os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert open_dataset(f"wds:{t}").fingerprint() != fp


def test_corrupt_member_and_truncated_shard(tmp_path):
    t = tmp_path / "00000.tar"
    write_tar(t, [("a.jpg", b"not a jpeg at all"), ("a.txt", "broken"),
                  ("b.png", png((3, 3, 3))), ("b.txt", "fine")])
    ds = open_dataset(f"wds:{t}")
    with pytest.raises(ImageLoadError) as exc:
        ds.load_image(0)
    assert exc.value.sample_id == "a" and exc.value.path.endswith("00000.tar:a.jpg")
    assert ds.load_image(1).size == (8, 6)
    # cut the shard inside b.png's data: indexing already happened, loading must fail cleanly
    data = t.read_bytes()
    end_of_b = ds._offsets[1] + ds._sizes[1]
    t.write_bytes(data[: int(end_of_b) - 10])
    fresh = pickle.loads(pickle.dumps(ds))  # no open handle: sees the truncated file
    with pytest.raises(ImageLoadError, match="truncated"):
        fresh.load_image(1)
    with pytest.raises(DataError, match="truncated"):
        fresh.validate()


def test_labels_from_cls_and_duplicate_keys_across_shards(tmp_path):
    write_tar(tmp_path / "s0.tar", [("k1.png", png((0, 0, 0))), ("k1.cls", "2"),
                                    ("k2.png", png((0, 0, 0))), ("k2.cls", "0")])
    write_tar(tmp_path / "s1.tar", [("k1.png", png((9, 9, 9))), ("k1.json", '{"label": 1}')])
    ds = open_dataset(f"wds:{tmp_path}")
    assert ds.ids == ["s0/k1", "s0/k2", "s1/k1"]
    assert ds.labels.tolist() == [2, 0, 1] and ds.n_classes == 3
    assert not ds.has_captions
    write_tar(tmp_path / "s1.tar", [("k3.png", png((9, 9, 9)))])
    with pytest.raises(DataError, match="some samples have labels and others not.*'k3'"):
        open_dataset(f"wds:{tmp_path}")


def test_compressed_or_empty_sources_are_refused(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="no .tar shards; compressed shards"):
        open_dataset(f"wds:{tmp_path}")
    write_tar(tmp_path / "only_text.tar", [("a.txt", "no image")])
    with pytest.raises(DataError, match="hold no samples with an image"):
        open_dataset(f"wds:{tmp_path / 'only_text.tar'}")


class _Torchify:
    """A minimal torch Dataset over ours, as the encoding pipeline would wrap it."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return np.asarray(self.ds.load_image(i), dtype=np.int64).sum()


def test_works_in_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    write_tar(tmp_path / "00000.tar", [(f"{k:06d}.png", png((k, 2 * k, 3))) for k in range(8)])
    ds = open_dataset(f"wds:{tmp_path}")
    ds.load_image(0)  # the parent now holds an open handle that workers inherit
    expected = [int(np.asarray(ds.load_image(i), dtype=np.int64).sum()) for i in range(8)]
    # fork only: spawn re-imports torch per worker (seconds each); what spawn adds,
    # pickling with the handles dropped, is covered by the truncated-shard test.
    loader = torch.utils.data.DataLoader(_Torchify(ds), batch_size=3, num_workers=2,
                                         multiprocessing_context="fork")
    got = [int(v) for batch in loader for v in batch]
    assert got == expected


# --------------------------------------------------------------------------- shards cut short, and text members in other encodings
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
