"""Writes that fail on a full disk, files damaged on disk, NaN in the cache (the cache, checkpoint and
reader parts): the disk error is the OSError it is and nothing finished is
lost; a damaged weights file is one error naming it; NaN never passes the fp16 guard and names the
cache entry; image-less webdataset samples are skipped and counted by the encoder like corrupt images."""
from __future__ import annotations

import errno
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe.errors import CacheDamagedError, DataError, ValidationError
from alignprobe.io import disk_error, library_write
from alignprobe.probe.embeddings.cache import CacheIdentity, EmbeddingCache, check_storage_range
from alignprobe.probe.training.checkpoint import CheckpointStore, load_weights

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors 0.8
OLD_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
            'device" })')


def _full_disk(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError(FULL)


def _identity(n=6, dtype="fp16"):
    return CacheIdentity("text", {"name": "toy"}, {"kind": "captions", "name": "caps", "fingerprint": "f", "n": n},
                         storage_dtype=dtype, shard_rows=3)


# --------------------------------------------------------------------------- full disk
def test_library_write_turns_safetensors_io_errors_into_oserror_and_passes_others(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(OSError) as exc:
        with library_write(tmp_path / "x.safetensors"):
            raise SafetensorError(FULL)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "x.safetensors")
    assert isinstance(exc.value.__cause__, SafetensorError)
    assert disk_error(SafetensorError(OLD_FULL), "p").errno == errno.ENOSPC  # older releases' wording
    with pytest.raises(SafetensorError, match="invalid tensor"):  # not an I/O failure: unchanged
        with library_write(tmp_path / "y"):
            raise SafetensorError("invalid tensor")
    assert disk_error(ValueError("nope"), "p") is None


def test_real_safetensors_io_failure_is_understood(tmp_path):
    """A real failed write, not a made-up message: a file-size limit (RLIMIT_FSIZE) makes the write
    fail with EFBIG inside safetensors, in a child process so the limit stays there."""
    import subprocess
    import sys

    code = f"""
import errno, resource, signal, numpy as np
from safetensors.numpy import save_file
from alignprobe.io import library_write
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    with library_write({str(tmp_path / 'big.safetensors')!r}):
        save_file({{"x": np.zeros(1 << 16, np.float32)}}, {str(tmp_path / 'big.safetensors')!r})
except OSError as err:
    print("OSError", err.errno == errno.EFBIG, err.filename)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["OSError", "True", str(tmp_path / "big.safetensors")], out.stderr


def test_full_disk_during_a_shard_write_keeps_finished_shards(tmp_path, monkeypatch):
    import safetensors.numpy

    cache, ident = EmbeddingCache(tmp_path), _identity()
    cache.begin(ident)
    cache.write_shard(ident, 0, np.ones((3, 4), np.float32), np.ones(3, bool), {})
    first = cache.shard_path(ident, 0).read_bytes()
    monkeypatch.setattr(safetensors.numpy, "save_file", _full_disk)
    with pytest.raises(OSError) as exc:
        cache.write_shard(ident, 1, np.ones((3, 4), np.float32), np.ones(3, bool), {})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(cache.shard_path(ident, 1))
    entry = cache.entry_dir(ident)
    assert cache.shard_path(ident, 0).read_bytes() == first
    assert not cache.shard_path(ident, 1).exists()
    assert not [p for p in entry.iterdir() if p.name.endswith(".tmp")]  # no half-written temp file
    assert cache.missing_shards(ident) == [1]  # a rerun resumes from shard 1


def test_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    import safetensors.torch

    store = CheckpointStore(tmp_path / "run")
    store.save(1, {"w": torch.ones(2)}, {}, {}, {"epoch": 1}, best_state={"w": torch.ones(2)})
    monkeypatch.setattr(safetensors.torch, "save_file", _full_disk)
    with pytest.raises(OSError) as exc:
        store.save(2, {"w": torch.zeros(2)}, {}, {}, {"epoch": 2})
    assert exc.value.errno == errno.ENOSPC
    assert sorted(p.name for p in store.root.iterdir()) == ["latest.json", "step-000000001"]
    loaded = store.load()
    assert loaded["state"] == {"epoch": 1} and loaded["model"]["w"].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- damaged files
def test_truncated_best_weights_name_the_file(tmp_path):
    store = CheckpointStore(tmp_path / "run")
    target = store.save(1, {"w": torch.ones(64)}, {}, {}, {"epoch": 1}, best_state={"w": torch.ones(64)})
    best = target / "best.safetensors"
    data = best.read_bytes()
    for cut in (data[:5], data[:40], data[:-16], b""):
        best.write_bytes(cut)
        with pytest.raises(ValidationError) as exc:
            load_weights(best)
        assert str(best) in str(exc.value) and "damaged" in str(exc.value)
    best.unlink()
    with pytest.raises(ValidationError, match="does not exist"):
        load_weights(best)


def test_damaged_checkpoint_files_name_the_file(tmp_path):
    store = CheckpointStore(tmp_path / "run")
    target = store.save(1, {"w": torch.ones(8)}, {"opt": torch.ones(3)}, {}, {"epoch": 1})
    model = target / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-4])
    with pytest.raises(ValidationError, match=rf"{model}.*damaged"):
        store.load()
    store.save(2, {"w": torch.ones(8)}, {"opt": torch.ones(3)}, {}, {"epoch": 2})
    optim = store.path() / "optimizer.pt"
    optim.write_bytes(optim.read_bytes()[:30])
    with pytest.raises(ValidationError, match=rf"{optim} is damaged"):
        store.load()
    store.save(3, {"w": torch.ones(8)}, {"opt": torch.ones(3)}, {}, {"epoch": 3})
    (store.path() / "state.json").write_text('{"epoch": ')
    with pytest.raises(ValidationError, match=r"state.json is damaged"):
        store.load()


# --------------------------------------------------------------------------- NaN and the fp16 guard
def test_fp16_guard_fails_closed_when_nan_shares_the_shard():
    beyond = np.array([[1.0, 1e6], [np.nan, 0.0]], np.float32)  # overflow and a NaN: np.max is NaN
    with pytest.raises(DataError, match=r"1 of 2 rows hold NaN or Inf \(the first is row 1"):
        check_storage_range(beyond, "fp16", "here")
    with pytest.raises(DataError, match="NaN or Inf"):
        check_storage_range(np.array([[np.inf, 0.0]], np.float32), "fp32", "here")
    with pytest.raises(ValidationError, match="beyond the fp16 range"):
        check_storage_range(np.array([[1e6, 0.0]], np.float32), "fp16", "here")
    check_storage_range(np.array([[1e6, 0.0]], np.float32), "fp32", "here")


def test_nan_written_or_read_names_the_cache_entry(tmp_path):
    from safetensors.numpy import save_file

    cache, ident = EmbeddingCache(tmp_path), _identity(dtype="fp32")
    cache.begin(ident)
    bad = np.ones((3, 4), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(DataError) as exc:
        cache.write_shard(ident, 0, bad, np.ones(3, bool), {})
    assert str(cache.entry_dir(ident)) in str(exc.value) and "shard 0" in str(exc.value)
    assert not cache.shard_path(ident, 0).exists()
    # a shard damaged on disk (written by something else): reading it names the entry and the shard
    for j in range(2):
        cache.write_shard(ident, j, np.ones((3, 4), np.float32), np.ones(3, bool), {})
    save_file({"embeddings": bad, "valid": np.ones(3, np.uint8)}, str(cache.shard_path(ident, 1)),
              metadata={"skipped": "{}", "rows": "3:6"})
    entry = cache.finalize(ident)
    assert entry.rows([0, 1]).shape == (2, 4)  # the sound shard reads fine
    with pytest.raises(CacheDamagedError) as exc:
        entry.rows([4, 5])
    msg = str(exc.value)
    assert str(cache.entry_dir(ident)) in msg and "shard-00001.safetensors" in msg and "row 2 of the shard" in msg


# --------------------------------------------------------------------------- wds samples without images
class _MeanColour:
    modality, dim = "vision", 3

    def manifest(self):
        return {"name": "mean-colour"}

    def preprocess(self, image):
        return torch.tensor(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))

    def collate(self, items):
        return torch.stack(items)

    def forward(self, batch):
        return batch / 255.0


def _png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_encoding_counts_imageless_wds_samples_as_skipped_and_strict_refuses(tmp_path):
    from alignprobe.probe.data.spec import open_dataset
    from alignprobe.probe.embeddings.encoding import ImageSource, encode_source

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        for name, data in (("a.png", _png()), ("a.txt", b"a"), ("b.txt", b"caption only"), ("c.png", _png())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = open_dataset(f"wds:{shard}")
    res = encode_source(_MeanColour(), ImageSource(ds), cache=EmbeddingCache(tmp_path / "c1"), num_workers=0,
                        quiet=True)
    assert list(res.skipped) == ["b"] and "no image member" in res.skipped["b"]
    assert res.embeddings.valid.tolist() == [True, False, True]
    assert "b" in res.embeddings.manifest["skipped"]
    with pytest.raises(DataError, match="'b'"):
        encode_source(_MeanColour(), ImageSource(ds), cache=EmbeddingCache(tmp_path / "c2"), num_workers=0,
                      quiet=True, strict=True)
