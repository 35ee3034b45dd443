"""Length-sorted caption batching in `encode_source`: batches of similar length, rows back in the
source's order and equal to unsorted encoding; the batch a text source runs in."""
import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe import create_vision_encoder
from alignprobe.errors import ValidationError
from alignprobe.probe.embeddings.cache import EmbeddingCache
from alignprobe.probe.embeddings.encoding import (
    CPU_TEXT_BATCH,
    ImageSource,
    TextSource,
    batch_order,
    encode_source,
    text_batch,
)
from helpers import RecordingEncoder, tiny_text_encoder

TEXTS = [("word " * (1 + (7 * i) % 23)).strip() + f" {i}" for i in range(70)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_text_encoder(tmp_path_factory.mktemp("st") / "model")


def encode(enc, tmp_path, name, **kwargs) -> np.ndarray:
    result = encode_source(enc, TextSource("t", TEXTS), cache=EmbeddingCache(tmp_path / name),
                           storage_dtype="fp32", quiet=True, **kwargs)
    return result.embeddings.to_numpy()


def test_sorted_batches_come_back_in_order_and_equal_unsorted(encoder, tmp_path):
    rec = RecordingEncoder(encoder)
    ordered = encode(rec, tmp_path, "sorted", batch_size=8, text_batch_size=8, shard_rows=32)
    # within each shard (32 rows), every batch holds texts no longer than the one before
    lengths = [[len(t) for t in b] for b in rec.batches]
    assert all(b == sorted(b, reverse=True) for b in lengths)
    assert any(b[0] > b[-1] for b in lengths)  # the test texts do need sorting
    assert len(rec.batches) == 4 + 4 + 1  # shards of 32, 32, 6 rows in batches of 8
    plain = RecordingEncoder(encoder)
    unsorted = encode(plain, tmp_path, "unsorted", batch_size=8, text_batch_size=8, shard_rows=32,
                      length_sorted=False)
    assert [t for b in plain.batches for t in b] == TEXTS
    assert np.allclose(ordered, unsorted, atol=1e-5, rtol=1e-5)
    # row i is caption i: each row equals encoding that caption alone
    alone = torch.cat([encoder.encode([t]) for t in TEXTS]).numpy()
    assert np.allclose(ordered, alone, atol=1e-5, rtol=1e-5)


def test_batch_order_is_stable_and_within_the_shard():
    source = TextSource("t", ["aa", "b", "cc", "ddd", "e"])
    assert batch_order(source, 0, 5) == [3, 0, 2, 1, 4]
    assert batch_order(source, 1, 4) == [2, 1, 0]  # positions in rows 1..3: "ddd", "cc", "b"


def test_cpu_text_batch_is_at_least_the_measured_floor(encoder, tmp_path):
    assert text_batch(64, torch.device("cpu")) == CPU_TEXT_BATCH
    assert text_batch(1024, torch.device("cpu")) == 1024
    assert text_batch(8, torch.device("cuda")) == 8  # a GPU keeps the user's batch (memory)
    rec = RecordingEncoder(encoder)
    encode(rec, tmp_path, "default", batch_size=4)
    assert len(rec.batches) == 1 and len(rec.batches[0]) == len(TEXTS)
    rec = RecordingEncoder(encoder)
    encode(rec, tmp_path, "explicit", batch_size=4, text_batch_size=16)
    assert [len(b) for b in rec.batches] == [16, 16, 16, 16, 6]
    with pytest.raises(ValidationError, match="text_batch_size must be >= 1"):
        encode(encoder, tmp_path, "bad", text_batch_size=0)


def test_images_keep_their_order_and_batch(tmp_path):
    class Images:
        name, ids = "imgs", [f"i{k}" for k in range(5)]

        def __len__(self):
            return 5

        def fingerprint(self):
            return "five"

        def load_image(self, i):
            return Image.new("RGB", (8 + i, 8), (40 * i, 0, 0))

    seen = []
    enc = create_vision_encoder("pixels")  # a real, cheap encoder
    real = enc.forward

    def forward(batch):
        seen.append(len(batch))
        return real(batch)

    enc.forward = forward
    out = encode_source(enc, ImageSource(Images()), cache=EmbeddingCache(tmp_path), batch_size=2,
                        num_workers=0, quiet=True, storage_dtype="fp32").embeddings.to_numpy()
    assert seen == [2, 2, 1]
    assert np.allclose(out, enc.encode([Images().load_image(i) for i in range(5)]).numpy(), atol=1e-6)
