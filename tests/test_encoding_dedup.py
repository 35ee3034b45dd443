"""Each distinct text encoded once per encode job: the model sees the distinct strings only, every
row equals encoding its caption alone, the cache keeps its layout, order and key."""
import numpy as np
import pytest
import torch

from alignprobe.probe.embeddings.cache import EmbeddingCache
from alignprobe.probe.embeddings.encoding import TextSource, encode_source
from helpers import RecordingEncoder, tiny_text_encoder

# 8 distinct templated captions over 45 rows: duplicates within and across shards of 16 rows
TEMPLATES = [f"a {c} {s}" + " on grey" * (k % 3) for k, (c, s) in
             enumerate((c, s) for c in ("red", "blue") for s in ("disk", "square", "star", "ring"))]
TEXTS = [TEMPLATES[(i * 5 + i // 7) % len(TEMPLATES)] for i in range(45)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_text_encoder(tmp_path_factory.mktemp("st") / "model")


class Picky:
    """A text preprocessor that refuses texts containing "bad" (as a broken item is refused)."""

    def preprocess(self, item):
        if not isinstance(item, str) or "bad" in item:
            raise ValueError(f"refused {item!r}")
        return item

    def collate(self, items):
        return list(items)


class FakeEncoder:
    """Features from the text itself (no model), recording every batch it runs."""

    modality, device, preprocessor, is_loaded = "text", torch.device("cpu"), Picky(), True

    def __init__(self):
        self.batches = []

    def manifest(self):
        return {"name": "fake", "dim": 3}

    def forward(self, batch):
        self.batches.append(list(batch))
        return torch.tensor([[len(t), t.count("a"), sum(map(ord, t)) % 97] for t in batch], dtype=torch.float32)


def run(enc, texts, folder, **kwargs):
    return encode_source(enc, TextSource("t", texts), cache=EmbeddingCache(folder), storage_dtype="fp32",
                         quiet=True, **kwargs)


def test_distinct_texts_run_once_and_rows_equal_each_caption_alone(encoder, tmp_path):
    rec = RecordingEncoder(encoder)
    result = run(rec, TEXTS, tmp_path, text_batch_size=4, shard_rows=16)
    seen = [t for b in rec.batches for t in b]
    assert sorted(seen) == sorted(set(TEXTS))  # each distinct string once, across the three shards
    assert len(seen) < len(TEXTS)
    rows = result.embeddings.to_numpy()
    assert rows.shape == (len(TEXTS), encoder.dim) and result.embeddings.valid.all()
    alone = torch.cat([encoder.encode([t]) for t in TEXTS]).numpy()
    assert np.allclose(rows, alone, atol=1e-5, rtol=1e-5)


def test_same_rows_and_cache_key_as_encoding_every_row(encoder, tmp_path):
    every = RecordingEncoder(encoder)
    before = run(every, TEXTS, tmp_path / "every", text_batch_size=8, shard_rows=16, deduplicate=False)
    assert len([t for b in every.batches for t in b]) == len(TEXTS)  # the old behaviour: every row runs
    after = run(encoder, TEXTS, tmp_path / "once", text_batch_size=8, shard_rows=16)
    assert np.allclose(after.embeddings.to_numpy(), before.embeddings.to_numpy(), atol=1e-5, rtol=1e-5)
    # the cache key is unchanged: an entry written without de-duplication is a hit with it
    again = run(RecordingEncoder(encoder), TEXTS, tmp_path / "every", text_batch_size=8, shard_rows=16)
    assert again.cache_hit and again.embeddings.directory == before.embeddings.directory


def test_unsorted_batches_keep_the_source_order_and_skip_duplicates(tmp_path):
    fake = FakeEncoder()
    out = run(fake, TEXTS, tmp_path, text_batch_size=5, shard_rows=16, length_sorted=False).embeddings.to_numpy()
    seen = [t for b in fake.batches for t in b]
    assert seen == list(dict.fromkeys(TEXTS))  # first occurrences, in source order
    assert np.array_equal(out, FakeEncoder().forward(TEXTS).numpy())


def test_duplicates_of_an_unreadable_text_are_skipped_too(tmp_path):
    texts = ["ok one", "a bad one", "ok two", "bad", "a bad one", "ok one", "bad", "ok two", "a bad one"]
    fake = FakeEncoder()
    result = run(fake, texts, tmp_path, text_batch_size=2, shard_rows=3)
    assert sorted(t for b in fake.batches for t in b) == ["ok one", "ok two"]
    valid = result.embeddings.valid
    assert valid.tolist() == ["bad" not in t for t in texts]
    assert sorted(result.skipped) == sorted(f"captions:{i}" for i, t in enumerate(texts) if not valid[i])
    assert all("refused" in reason for reason in result.skipped.values())
    rows = result.embeddings.to_numpy()
    assert np.array_equal(rows[5], rows[0]) and np.array_equal(rows[7], rows[2])
    assert not rows[~valid].any()  # a skipped row stays zero


def test_resumed_shards_copy_only_within_what_runs_now(tmp_path):
    """A job that encodes only some shards (an interrupted run resumed) still fills every row."""
    fake = FakeEncoder()
    cache = EmbeddingCache(tmp_path)
    source = TextSource("t", TEXTS)
    full = encode_source(FakeEncoder(), source, cache=EmbeddingCache(tmp_path / "ref"), storage_dtype="fp32",
                         quiet=True, shard_rows=16).embeddings.to_numpy()
    encode_source(fake, source, cache=cache, storage_dtype="fp32", quiet=True, shard_rows=16, shard=(1, 2))
    first_pass = [t for b in fake.batches for t in b]
    assert sorted(first_pass) == sorted(set(TEXTS[16:32]))  # shard 1 alone: its own distinct texts
    rest = encode_source(fake, source, cache=cache, storage_dtype="fp32", quiet=True, shard_rows=16)
    assert np.array_equal(rest.embeddings.to_numpy(), full)
