"""The embedding cache and the batched encoder loop, on a deterministic toy encoder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe.errors import CacheMismatchError, DataError, ImageLoadError, ValidationError
from alignprobe.probe.embeddings.cache import CacheIdentity, EmbeddingCache, memmap_safetensors
from alignprobe.probe.embeddings.encoding import ImageSource, TextSource, encode_source, parse_shard


class ToyTextEncoder:
    """Deterministic features of a string; counts how many items it really encoded."""

    modality = "text"
    dim = 8

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.calls = 0
        self.rows = 0

    def manifest(self):
        return {"name": "toy-text", "prefix": self.prefix}

    def preprocess(self, item):
        return self.prefix + item

    def collate(self, items):
        return list(items)

    def forward(self, batch):
        self.calls += 1
        self.rows += len(batch)
        out = torch.zeros(len(batch), self.dim)
        for r, text in enumerate(batch):
            for c in range(self.dim):
                out[r, c] = (sum(map(ord, text)) * (c + 1) % 97) / 97.0
        return out


class ToyImageEncoder:
    modality = "vision"
    dim = 3

    def __init__(self):
        self.rows = 0

    def manifest(self):
        return {"name": "toy-vision"}

    def preprocess(self, image):
        return torch.tensor(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))

    def collate(self, items):
        return torch.stack(items)

    def forward(self, batch):
        self.rows += len(batch)
        return batch / 255.0


class ToyImages:
    """A dataset of flat-colour images; the listed indices are 'missing'."""

    def __init__(self, n, missing=()):
        self.name, self.ids, self.missing = "toy-images", [f"img{i}" for i in range(n)], set(missing)

    def __len__(self):
        return len(self.ids)

    def fingerprint(self):
        return f"toy-{len(self)}-{sorted(self.missing)}"

    def load_image(self, i):
        if i in self.missing:
            raise ImageLoadError(self.ids[i], f"/nowhere/{i}.png", "file not found")
        return Image.new("RGB", (4, 4), (i % 256, 2 * i % 256, 3 * i % 256))


def texts(n):
    return [f"caption number {i}" for i in range(n)]


def test_second_encode_is_a_hit_and_encodes_nothing(tmp_path):
    cache = EmbeddingCache(tmp_path)
    enc = ToyTextEncoder()
    src = TextSource("toy", texts(50))
    first = encode_source(enc, src, cache=cache, batch_size=8, shard_rows=16, quiet=True)
    assert not first.cache_hit and first.encoded_rows == 50 and enc.rows == 50
    second = encode_source(enc, src, cache=cache, batch_size=8, shard_rows=16, quiet=True)
    assert second.cache_hit and second.encoded_rows == 0 and enc.rows == 50
    np.testing.assert_array_equal(first.embeddings.to_numpy(), second.embeddings.to_numpy())
    assert second.embeddings.shape == (50, 8)


def test_fp16_storage_by_default_and_fp32_selectable(tmp_path):
    cache = EmbeddingCache(tmp_path)
    src = TextSource("toy", texts(5))
    half = encode_source(ToyTextEncoder(), src, cache=cache, quiet=True)
    full = encode_source(ToyTextEncoder(), src, cache=cache, storage_dtype="fp32", quiet=True)
    assert half.embeddings.manifest["dtype"] == "fp16" and full.embeddings.manifest["dtype"] == "fp32"
    assert half.embeddings.directory != full.embeddings.directory
    np.testing.assert_allclose(half.embeddings.to_numpy(), full.embeddings.to_numpy(), atol=1e-3)


def test_manifest_mismatch_recomputes_or_errors(tmp_path):
    cache = EmbeddingCache(tmp_path)
    src = TextSource("toy", texts(10))
    encode_source(ToyTextEncoder(prefix=""), src, cache=cache, quiet=True)
    other = ToyTextEncoder(prefix="query: ")
    with pytest.raises(CacheMismatchError, match="encoder.prefix"):
        encode_source(other, src, cache=cache, recompute=False, quiet=True)
    res = encode_source(other, src, cache=cache, quiet=True)
    assert not res.cache_hit and other.rows == 10
    # Changed texts are a different source fingerprint: also a miss.
    changed = TextSource("toy", texts(9) + ["something else"])
    assert not encode_source(other, changed, cache=cache, quiet=True).cache_hit


def test_manifest_records_identity(tmp_path):
    cache = EmbeddingCache(tmp_path)
    res = encode_source(ToyTextEncoder(prefix="p"), TextSource("toy", texts(3)), cache=cache, quiet=True)
    manifest = json.loads((res.embeddings.directory / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["identity"]["encoder"] == {"name": "toy-text", "prefix": "p"}
    assert manifest["identity"]["source"]["kind"] == "captions"
    assert manifest["shape"] == [3, 8] and manifest["dtype"] == "fp16"
    assert "alignprobe_version" in manifest


class Interrupt(Exception):
    pass


def test_interrupted_encode_resumes_to_identical_result(tmp_path):
    src = TextSource("toy", texts(100))
    reference = encode_source(ToyTextEncoder(), src, cache=EmbeddingCache(tmp_path / "a"),
                              batch_size=10, shard_rows=25, quiet=True).embeddings.to_numpy()

    cache = EmbeddingCache(tmp_path / "b")
    seen = []

    def stop_after_60(n):
        seen.append(n)
        if sum(seen) >= 60:
            raise Interrupt

    enc = ToyTextEncoder()
    with pytest.raises(Interrupt):
        encode_source(enc, src, cache=cache, batch_size=10, shard_rows=25, quiet=True, on_batch=stop_after_60)
    entry = next((tmp_path / "b").rglob("manifest.partial.json")).parent
    assert sorted(p.name for p in entry.glob("shard-*.safetensors")) == ["shard-00000.safetensors",
                                                                       "shard-00001.safetensors"]
    assert not list(entry.glob("*.tmp"))  # no half-written shard left behind
    resumed_enc = ToyTextEncoder()
    res = encode_source(resumed_enc, src, cache=cache, batch_size=10, shard_rows=25, quiet=True)
    assert resumed_enc.rows == 50  # only the two missing shards
    np.testing.assert_array_equal(res.embeddings.to_numpy(), reference)


def test_sharded_hosts_fill_one_entry(tmp_path):
    cache = EmbeddingCache(tmp_path)
    src = TextSource("toy", texts(70))
    a = encode_source(ToyTextEncoder(), src, cache=cache, shard_rows=10, shard=(0, 2), quiet=True)
    assert a.embeddings is None  # the other host's shards are still missing
    b_enc = ToyTextEncoder()
    b = encode_source(b_enc, src, cache=cache, shard_rows=10, shard=(1, 2), quiet=True)
    assert b_enc.rows == 30 and b.embeddings is not None
    whole = encode_source(ToyTextEncoder(), src, cache=EmbeddingCache(tmp_path / "one"), shard_rows=10,
                          quiet=True)
    np.testing.assert_array_equal(b.embeddings.to_numpy(), whole.embeddings.to_numpy())


def test_missing_images_skipped_and_counted(tmp_path):
    res = encode_source(ToyImageEncoder(), ImageSource(ToyImages(12, missing={3, 7})),
                        cache=EmbeddingCache(tmp_path), batch_size=4, num_workers=0, quiet=True)
    emb = res.embeddings
    assert sorted(res.skipped) == ["img3", "img7"]
    assert emb.skipped_ids == ["img3", "img7"]
    assert emb.valid.tolist() == [i not in (3, 7) for i in range(12)]
    assert np.all(emb.to_numpy()[[3, 7]] == 0)
    np.testing.assert_allclose(emb.rows([5])[0], np.array([5, 10, 15]) / 255.0, atol=1e-3)


def test_missing_image_is_an_error_under_strict(tmp_path):
    with pytest.raises(DataError, match="img3.*--strict"):
        encode_source(ToyImageEncoder(), ImageSource(ToyImages(6, missing={3})),
                      cache=EmbeddingCache(tmp_path), num_workers=0, strict=True, quiet=True)


def test_images_decode_in_worker_processes(tmp_path):
    res = encode_source(ToyImageEncoder(), ImageSource(ToyImages(20, missing={4})),
                        cache=EmbeddingCache(tmp_path), batch_size=3, num_workers=2, quiet=True)
    assert res.embeddings.valid.sum() == 19


def test_default_decoding_workers_follow_where_the_model_runs(monkeypatch):
    """Images decode in workers, except for a CPU model on a machine of at most 2 cores, whose
    forward already keeps every core busy; texts never use workers."""
    from alignprobe.probe.embeddings import encoding

    images, texts = ImageSource([]), TextSource("none", ["a"], "captions")
    for cores, device, expected in ((2, "cpu", 0), (2, None, 0), (2, torch.device("cpu"), 0), (1, "cpu", 0),
                                    (2, "cuda:0", 1), (2, torch.device("cuda", 0), 1), (4, "cpu", 3),
                                    (16, "cpu", 8), (16, "cuda", 8)):
        monkeypatch.setattr(encoding.os, "cpu_count", lambda: cores)
        assert encoding.default_num_workers(images, device) == expected, (cores, device)
        assert encoding.default_num_workers(texts, device) == 0


def test_rows_gathers_across_shards_in_any_order(tmp_path):
    res = encode_source(ToyTextEncoder(), TextSource("toy", texts(40)), cache=EmbeddingCache(tmp_path),
                        shard_rows=7, storage_dtype="fp32", quiet=True)
    full = res.embeddings.to_numpy()
    index = np.array([39, 0, 13, 7, 6, 20])
    np.testing.assert_array_equal(res.embeddings.rows(index), full[index])


def test_an_entry_opens_as_memory_maps_of_its_shards(tmp_path):
    # how little memory a large entry costs is measured by benchmarks/cache_memory.py
    cache = EmbeddingCache(tmp_path)
    identity = CacheIdentity("text", {"name": "big"}, {"kind": "captions", "name": "big", "n": 300,
                                                         "fingerprint": "x"}, "fp16", shard_rows=100)
    cache.begin(identity)
    blocks = [np.random.default_rng(j).standard_normal((100, 16), dtype=np.float32) for j in range(3)]
    for j, block in enumerate(blocks):
        cache.write_shard(identity, j, block, np.ones(100, bool), {})
    cache.finalize(identity)
    emb = cache.lookup(identity)
    assert emb.shape == (300, 16)
    shards = [memmap_safetensors(emb.directory / name)["embeddings"] for name in emb.manifest["shards"]]
    assert len(shards) == 3 and all(isinstance(s, np.memmap) and s.dtype == np.float16 for s in shards)
    np.testing.assert_array_equal(emb.rows([0, 299]), np.stack([blocks[0][0], blocks[2][99]]).astype(np.float16))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValidationError, match=r"needs 0 <= I < N, got '3/2'"):
        parse_shard("3/2")
    with pytest.raises(ValidationError, match=r"must look like I/N \(e\.g\. 0/4\), got 'half'"):
        parse_shard("half")
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(DataError, match="no captions"):
        encode_source(ToyTextEncoder(), TextSource("empty", []), cache=EmbeddingCache(tmp_path), quiet=True)


def test_shard_defaults_to_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == (2, 3)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert parse_shard(None) == (0, 1)
