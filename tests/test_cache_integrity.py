"""The embedding cache's integrity: damaged entries are reported, moved aside and recomputed; strict
mode against entries cached with skips; fp16 overflow refused before casting; concurrent
finalisation; file modes that follow the umask; shard size as the resume unit; NaN wording."""
from __future__ import annotations

import multiprocessing
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe.errors import CacheDamagedError, DataError, ImageLoadError, ValidationError
from alignprobe.io import atomic_path, write_json_atomic
from alignprobe.probe.embeddings.cache import CacheIdentity, EmbeddingCache, check_shard, open_cache
from alignprobe.probe.embeddings.encoding import TextSource, encode_source, nonfinite_message, ImageSource


class Toy:
    """Deterministic text features; `scale` makes values as large as asked; counts rows encoded."""

    modality = "text"
    dim = 4

    def __init__(self, scale: float = 1.0, dtype: str = "fp32"):
        self.scale, self.rows, self.dtype = scale, 0, dtype

    def manifest(self):
        return {"name": "toy", "scale": self.scale, "dtype": self.dtype}

    def preprocess(self, item):
        return item

    def collate(self, items):
        return list(items)

    def forward(self, batch):
        self.rows += len(batch)
        return torch.tensor([[len(t) * (c + 1) * self.scale for c in range(self.dim)] for t in batch],
                            dtype=torch.float32)


class ToyImages:
    def __init__(self, n, missing=()):
        self.name, self.ids, self.missing = "imgs", [f"img{i}" for i in range(n)], set(missing)

    def __len__(self):
        return len(self.ids)

    def fingerprint(self):
        return f"imgs-{len(self)}"  # the same files either way: what a fixed image would not change

    def load_image(self, i):
        if i in self.missing:
            raise ImageLoadError(self.ids[i], f"/data/{i}.png", "file not found")
        return Image.new("RGB", (2, 2), (i, i, i))


class ToyVision:
    modality, dim = "vision", 3

    def manifest(self):
        return {"name": "toy-vision"}

    def preprocess(self, image):
        return torch.tensor(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))

    def collate(self, items):
        return torch.stack(items)

    def forward(self, batch):
        return batch


def _texts(n):
    return [f"caption {'x' * (i % 7)} {i}" for i in range(n)]


def _encode(cache, n=20, shard_rows=8, **kw):
    enc = kw.pop("encoder", None) or Toy()
    res = encode_source(enc, TextSource("caps", _texts(n)), cache=cache, batch_size=4, shard_rows=shard_rows,
                        quiet=True, num_workers=0, **kw)
    return res, enc


# --------------------------------------------------------------------------- damaged entries
@pytest.mark.parametrize("damage", ["truncate_shard", "empty_shard", "truncate_manifest", "empty_manifest",
                                    "delete_shard"])
def test_damaged_entry_is_reported_moved_aside_and_recomputed(tmp_path, damage, caplog):
    cache = EmbeddingCache(tmp_path / "cache")
    first, _ = _encode(cache)
    expected = first.embeddings.to_numpy()
    entry = first.embeddings.directory
    shard = entry / "shard-00001.safetensors"
    original = {"manifest": (entry / "manifest.json").read_bytes(), "shard": shard.read_bytes()}
    if damage == "truncate_shard":
        shard.write_bytes(original["shard"][:-10])
    elif damage == "empty_shard":
        shard.write_bytes(b"")
    elif damage == "truncate_manifest":
        (entry / "manifest.json").write_bytes(original["manifest"][:40])
    elif damage == "empty_manifest":
        (entry / "manifest.json").write_bytes(b"")
    else:
        shard.unlink()
    watched = (entry / "manifest.json", shard)
    damaged_bytes = {p.name: p.read_bytes() for p in watched if p.exists()}
    # What lookup moves aside: the manifest always (the entry is no longer complete), the shard if damaged.
    moved = {n: b for n, b in damaged_bytes.items() if n == "manifest.json" or "shard" in damage}

    # --no-recompute: a clear error naming the entry, and nothing is moved or rewritten.
    with pytest.raises(CacheDamagedError, match=f"cache entry {entry} is damaged.*--no-recompute"):
        _encode(cache, recompute=False)
    assert {p.name: p.read_bytes() for p in watched if p.exists()} == damaged_bytes

    with caplog.at_level("WARNING"):
        again, enc = _encode(cache)
    assert "is damaged" in caplog.text and str(entry) in caplog.text
    np.testing.assert_array_equal(again.embeddings.to_numpy(), expected)
    # Only what was damaged is recomputed: one shard of 8 rows (none when only the manifest was).
    assert enc.rows == (0 if "manifest" in damage else 8)
    [aside] = list(entry.glob("damaged-*"))
    assert sorted(p.name for p in aside.iterdir()) == sorted(moved)  # kept for inspection
    for name, data in moved.items():
        assert (aside / name).read_bytes() == data
    assert _encode(cache)[0].cache_hit


def test_damaged_shard_of_an_unfinished_entry_is_reencoded_on_resume(tmp_path):
    cache = EmbeddingCache(tmp_path)
    enc = Toy()
    source = TextSource("caps", _texts(20))
    stop = {"n": 0}

    def kill_after_two_shards(rows):  # called before a shard is written: at row 20 shards 0 and 1 exist
        stop["n"] += rows
        if stop["n"] >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_source(enc, source, cache=cache, batch_size=4, shard_rows=8, quiet=True, on_batch=kill_after_two_shards)
    identity = CacheIdentity("text", enc.manifest(), source.describe(), "fp16", 8)
    (cache.shard_path(identity, 0)).write_bytes(b"\x00" * 5)
    resumed = Toy()
    res = encode_source(resumed, source, cache=cache, batch_size=4, shard_rows=8, quiet=True)
    assert resumed.rows == 8 + 4  # shard 0 again (damaged) and the missing shard 2; shard 1 is kept
    fresh = encode_source(Toy(), source, cache=EmbeddingCache(tmp_path / "fresh"), batch_size=4, shard_rows=8,
                          quiet=True)
    np.testing.assert_array_equal(res.embeddings.to_numpy(), fresh.embeddings.to_numpy())


def test_check_shard_reports_what_is_wrong(tmp_path):
    cache = EmbeddingCache(tmp_path)
    res, _ = _encode(cache)
    shard = res.embeddings.directory / "shard-00000.safetensors"
    assert check_shard(shard, rows=8, dim=4) is None
    assert "holds 8 rows, expected 9" in check_shard(shard, rows=9)
    data = shard.read_bytes()
    shard.write_bytes(data + b"junk")
    assert "truncated or padded" in check_shard(shard)
    shard.write_bytes(data[:6])
    assert "no header" in check_shard(shard)


# --------------------------------------------------------------------------- strict vs cache
def test_strict_against_a_lenient_cached_entry_names_the_skipped_images(tmp_path):
    cache = EmbeddingCache(tmp_path)
    lenient = encode_source(ToyVision(), ImageSource(ToyImages(12, missing={3, 7})), cache=cache, batch_size=4,
                            shard_rows=5, quiet=True, num_workers=0)
    assert set(lenient.skipped) == {"img3", "img7"}
    with pytest.raises(DataError, match=r"--strict: 2 of the 12 images.*'img3' \(file not found\).*'img7'.*"
                                        r"without --strict"):
        encode_source(ToyVision(), ImageSource(ToyImages(12, missing={3, 7})), cache=cache, batch_size=4,
                      shard_rows=5, quiet=True, num_workers=0, strict=True)
    # The entry is untouched and still a lenient hit.
    again = encode_source(ToyVision(), ImageSource(ToyImages(12, missing={3, 7})), cache=cache, batch_size=4,
                          shard_rows=5, quiet=True, num_workers=0)
    assert again.cache_hit and set(again.skipped) == {"img3", "img7"}


def test_strict_resume_over_lenient_shards_is_an_error_too(tmp_path):
    cache = EmbeddingCache(tmp_path)
    seen = {"n": 0}

    def stop(rows):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # lenient run killed after its first shard (with img1 skipped)
        encode_source(ToyVision(), ImageSource(ToyImages(12, missing={1})), cache=cache, batch_size=5,
                      shard_rows=5, quiet=True, num_workers=0, on_batch=stop)
    with pytest.raises(DataError, match=r"1 of the 12 images.*shards already encoded.*'img1'"):
        encode_source(ToyVision(), ImageSource(ToyImages(12, missing={1})), cache=cache, batch_size=5,
                      shard_rows=5, quiet=True, num_workers=0, strict=True)
    # A clean source under strict has nothing to complain about.
    ok = encode_source(ToyVision(), ImageSource(ToyImages(12)), cache=EmbeddingCache(tmp_path / "b"),
                       shard_rows=5, quiet=True, num_workers=0, strict=True)
    assert ok.skipped == {}


# --------------------------------------------------------------------------- fp16 overflow
def test_fp16_overflow_is_refused_before_casting_and_fp32_stores_it(tmp_path):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValidationError, match=r"beyond the fp16 range.*--storage-dtype fp32"):
        _encode(cache, encoder=Toy(scale=5000.0))
    assert not list(tmp_path.rglob("shard-*.safetensors"))  # no Inf ever reached the disk
    res, _ = _encode(cache, encoder=Toy(scale=5000.0), storage_dtype="fp32")
    values = res.embeddings.to_numpy()
    assert np.isfinite(values).all() and values.max() > 65504
    # In range, fp16 is still the default and works.
    assert np.isfinite(_encode(cache, encoder=Toy(scale=1.0))[0].embeddings.to_numpy()).all()


# --------------------------------------------------------------------------- finalize
def _finish(root, n_rounds, queue):
    try:
        cache = EmbeddingCache(root)
        identity = CacheIdentity("text", {"name": "race"}, {"kind": "captions", "name": "r", "fingerprint": "f",
                                                            "n": 6}, "fp32", 3)
        for _ in range(n_rounds):
            cache.begin(identity)
            done = cache.finalize(identity)  # None would mean a shard was missing
            assert done.manifest["status"] == "complete" and done.manifest["shape"] == [6, 2]
        queue.put("ok")
    except BaseException as err:  # reported to the parent, which fails the test
        queue.put(f"{type(err).__name__}: {err}")


def test_concurrent_finalize_is_idempotent(tmp_path):
    cache = EmbeddingCache(tmp_path)
    identity = CacheIdentity("text", {"name": "race"}, {"kind": "captions", "name": "r", "fingerprint": "f", "n": 6},
                             "fp32", 3)
    cache.begin(identity)
    for j in range(2):
        cache.write_shard(identity, j, np.full((3, 2), j, np.float32), np.ones(3, bool), {})
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_finish, args=(tmp_path, 25, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert results == ["ok"] * 4
    emb = cache.lookup(identity)
    np.testing.assert_array_equal(emb.to_numpy(), np.repeat([[0, 0]] * 3 + [[1, 1]] * 3, 1, axis=0))
    assert not (cache.entry_dir(identity) / "manifest.partial.json").exists()


# --------------------------------------------------------------------------- umask
@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(tmp_path, umask_002):
    res, _ = _encode(EmbeddingCache(tmp_path / "cache"))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in files), \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o664
    os.umask(0o077)  # a private umask is honoured as well
    with atomic_path(tmp_path / "private.txt") as tmp:
        tmp.write_text("x")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_checkpoint_dirs_follow_the_umask_and_stale_tmp_dirs_are_pruned(tmp_path, umask_002):
    from alignprobe.probe.training.checkpoint import CheckpointStore

    store = CheckpointStore(tmp_path / "run")
    state = {"w": torch.ones(2)}
    store.save(1, state, {}, {}, {"epoch": 1})
    stale = store.root / ".step-000000002.abc123.tmp"  # left by a save killed before its rename
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    target = store.save(2, state, {}, {}, {"epoch": 2})
    assert stat.S_IMODE(target.stat().st_mode) == 0o775
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o664 for f in target.iterdir())
    assert not stale.exists()
    assert sorted(p.name for p in store.root.iterdir()) == ["latest.json", "step-000000002"]
    assert store.load()["state"] == {"epoch": 2}


# --------------------------------------------------------------------------- shard rows
def test_shard_rows_sets_the_resume_unit_and_other_sizes_are_still_hits(tmp_path):
    cache = EmbeddingCache(tmp_path)
    source = TextSource("caps", _texts(10))
    calls = {"n": 0}

    def kill_at_row_8(rows):
        calls["n"] += rows
        if calls["n"] >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_source(Toy(), source, cache=cache, batch_size=2, shard_rows=2, quiet=True, on_batch=kill_at_row_8)
    resumed = Toy()
    res = encode_source(resumed, source, cache=cache, batch_size=2, shard_rows=2, quiet=True)
    assert resumed.rows == 2 + 2 and len(res.embeddings.manifest["shards"]) == 5  # lost at most one shard
    # The same rows under another shard size are a hit, not a re-encode.
    other = Toy()
    hit = encode_source(other, source, cache=cache, batch_size=2, shard_rows=4, quiet=True)
    assert hit.cache_hit and other.rows == 0
    np.testing.assert_array_equal(hit.embeddings.to_numpy(), res.embeddings.to_numpy())
    with pytest.raises(ValidationError, match="--shard-rows"):
        encode_source(Toy(), source, cache=cache, shard_rows=0, quiet=True)


def test_default_shard_is_small_enough_for_slow_encoders():
    from alignprobe.probe.embeddings.cache import DEFAULT_SHARD_ROWS

    identity = CacheIdentity("text", {"name": "x"}, {"kind": "captions", "name": "c", "fingerprint": "f", "n": 10})
    assert identity.shard_rows == DEFAULT_SHARD_ROWS <= 4096


# --------------------------------------------------------------------------- wording
def test_nonfinite_message_suggests_fp32_only_below_fp32():
    assert "try --dtype fp32" in nonfinite_message("enc", "data", 0, 8, "fp16")
    assert "try --dtype fp32" in nonfinite_message("enc", "data", 0, 8, "bf16")
    msg = nonfinite_message("enc", "data", 0, 8, "fp32")
    assert "--dtype fp32" not in msg and "already computing in fp32" in msg and "weights or these inputs" in msg


def test_encoder_nonfinite_and_wrong_modality_wording_speaks_to_cli_users():
    from alignprobe.backbones import create_text_encoder, create_vision_encoder
    from alignprobe.backbones.encoder import nonfinite_hint
    from alignprobe.errors import UnknownEncoderError

    assert "--dtype fp32" in nonfinite_hint("fp16")
    assert "--dtype" not in nonfinite_hint("fp32") and "precision is not the cause" in nonfinite_hint("fp32")
    with pytest.raises(UnknownEncoderError) as err:
        create_vision_encoder("minilm")
    assert "--text NAME" in str(err.value) and "create_text_encoder in Python" in str(err.value)
    with pytest.raises(UnknownEncoderError, match="--vision NAME"):
        create_text_encoder("pixels")


def test_shard_rows_travels_with_the_cache_of_the_options(tmp_path):
    # How `--shard-rows` reaches every command that encodes (run, sweep, train build caches from options).
    from alignprobe.config import EncodeOptions

    cache = open_cache(EncodeOptions(cache_dir=str(tmp_path), shard_rows=3))
    res = encode_source(Toy(), TextSource("caps", _texts(10)), cache=cache, quiet=True)
    assert len(res.embeddings.manifest["shards"]) == 4 and res.embeddings.manifest["identity"]["shard_rows"] == 3
    with pytest.raises(ValidationError, match="shard_rows must be >= 1"):
        EncodeOptions(shard_rows=0)
