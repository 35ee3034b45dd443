"""Layer-wise features: block N of a tiny model saved to disk and loaded back the real way.

Each check compares the encoder with the model's own `hidden_states[N]` (transformers) or
`forward_intermediates` (timm) pooled by hand, and the cache with a layer change.
"""

import numpy as np
import pytest
import torch
from alignprobe.backbones import create_vision_encoder, resolve_spec

from alignprobe.errors import ValidationError
from alignprobe.probe.embeddings.cache import EmbeddingCache
from alignprobe.probe.embeddings.encoding import encode_source
from helpers import images, invoke, save_hf_vision, timm_vit


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    return save_hf_vision(tmp_path_factory.mktemp("tiny") / "dinov2", num_hidden_layers=3)


def _hidden(directory, x):
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(directory).eval()
    with torch.inference_mode():
        return model(pixel_values=x, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("pooling", ["concat", "cls", "mean"])
def test_layer_features_equal_hidden_states_pooled_by_hand(tiny_dinov2, pooling):
    imgs = images()
    enc = create_vision_encoder(tiny_dinov2, pooling=pooling, layer=2)
    assert enc.spec.layer == 2 and enc.spec.name.endswith("@2")
    x = enc.collate([enc.preprocess(im) for im in imgs])
    h = _hidden(tiny_dinov2, x)[2].float()
    cls, patches = h[:, 0], h[:, 1:].mean(1)
    expect = {"concat": torch.cat([cls, patches], 1), "cls": cls, "mean": patches}[pooling]
    z = enc.encode(imgs)
    assert z.shape == expect.shape
    assert torch.allclose(z, expect, atol=1e-5)
    # block 2 of 3 is not the last hidden state: the layer really changes the features
    last = create_vision_encoder(tiny_dinov2, pooling=pooling).encode(imgs)
    assert not torch.allclose(z, last, atol=1e-3)


def test_one_forward_gives_several_layers(tiny_dinov2):
    imgs = images()
    enc = create_vision_encoder(tiny_dinov2, pooling="concat")
    many = enc.encode_layers(imgs, [3, 0, 1])
    assert list(many) == [3, 0, 1]
    x = enc.collate([enc.preprocess(im) for im in imgs])
    hidden = _hidden(tiny_dinov2, x)
    for n, z in many.items():
        h = hidden[n].float()
        assert torch.allclose(z, torch.cat([h[:, 0], h[:, 1:].mean(1)], 1), atol=1e-5)
        view = enc.at_layer(n)
        assert view.model is enc.model and view.spec.name.endswith(f"@{n}")
        assert torch.allclose(view.encode(imgs), z, atol=1e-6)
    with pytest.raises(ValidationError, match="has 3 blocks"):
        enc.encode_layers(imgs, [4])


def test_name_at_layer_syntax_and_manifest():
    spec = resolve_spec("dinov2-s-focus@8", "vision")
    assert spec.layer == 8 and spec.name == "dinov2-s-focus@8" and spec.base_name == "dinov2-s-focus"
    alias = resolve_spec("dinov2-s@4", "vision")  # an alias works as the base name too
    assert alias.layer == 4 and alias.name == "dinov2-vits14@4"
    assert resolve_spec("dinov2-s-focus", "vision").layer is None
    # hub revisions keep their meaning: '@' after an unregistered id is a revision
    assert resolve_spec("hf:facebook/dinov2-large@abc123", "vision").revision == "abc123"
    with pytest.raises(ValidationError, match="no layers"):
        resolve_spec("pixels@2", "vision")


def test_layer_is_in_the_manifest_and_a_layer_change_misses_the_cache(tiny_dinov2, tmp_path):
    from alignprobe.probe.embeddings.encoding import ImageSource

    class Images:
        name, ids = "tiny-images", ["a", "b", "c"]
        imgs = images()

        def __len__(self):
            return 3

        def fingerprint(self):
            return "tiny-3"

        def load_image(self, i):
            return self.imgs[i]

    cache = EmbeddingCache(tmp_path)
    src = ImageSource(Images())
    last = create_vision_encoder(tiny_dinov2, pooling="mean")
    assert "layer" not in last.manifest()  # last-block keys stay as they were
    l1 = create_vision_encoder(tiny_dinov2, pooling="mean", layer=1)
    l2 = l1.at_layer(2)
    assert l1.manifest()["layer"] == 1 and l2.manifest()["layer"] == 2
    first = encode_source(l1, src, cache=cache, num_workers=0, quiet=True)
    assert not first.cache_hit
    assert encode_source(l1, src, cache=cache, num_workers=0, quiet=True).cache_hit
    other = encode_source(l2, src, cache=cache, num_workers=0, quiet=True)
    assert not other.cache_hit and other.embeddings.directory != first.embeddings.directory
    assert not np.allclose(other.embeddings.to_numpy(), first.embeddings.to_numpy(), atol=1e-2)
    assert not encode_source(last, src, cache=cache, num_workers=0, quiet=True).cache_hit


def test_timm_layers_equal_forward_intermediates(tmp_path):
    model, kw = timm_vit(depth=3)
    ckpt = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    enc = create_vision_encoder("timm:vit_tiny_patch16_224", checkpoint=ckpt, pooling="concat",
                                layer=2, **kw)
    imgs = images()
    x = enc.collate([enc.preprocess(im) for im in imgs])
    with torch.inference_mode():
        # block 2 (index 1) by hand: run the blocks of timm's own ViT
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for block in model.blocks[:2]:
            t = block(t)
    expect = torch.cat([t[:, 0], t[:, 1:].mean(1)], 1)
    assert torch.allclose(enc.encode(imgs), expect, atol=1e-5)
    both = enc.encode_layers(imgs, [3, 1])
    assert both[3].shape == (3, 64) and not torch.allclose(both[3], both[1])
    with pytest.raises(ValidationError, match="from 1 to 3"):
        enc.encode_layers(imgs, [0])


def test_bad_layers_are_refused(tiny_dinov2):
    # text layers are allowed now (tests/test_text_layers.py); a control still has none
    with pytest.raises(ValidationError, match="has no layers"):
        resolve_spec("bow", "text").with_layer(2)
    with pytest.raises(ValidationError, match="block index"):
        create_vision_encoder(tiny_dinov2, layer=-1)


class _Images:
    """Six images; a plain dataset of the encode loop's contract."""

    name, ids = "tiny-images", [f"img{i}" for i in range(6)]
    imgs = images(6, seed=3)

    def __len__(self):
        return len(self.ids)

    def fingerprint(self):
        return "tiny-6"

    def load_image(self, i):
        return self.imgs[i]


def test_one_encode_fills_the_cache_of_several_layers(tiny_dinov2, tmp_path):
    from alignprobe.probe.embeddings.encoding import ImageSource
    from alignprobe.probe.embeddings.layers import encode_source_layers, parse_layers

    assert parse_layers("4, 8,12,8") == [4, 8, 12] and parse_layers(None) is None
    with pytest.raises(ValidationError, match="block numbers"):
        parse_layers("4,x")
    cache = EmbeddingCache(tmp_path)
    src = ImageSource(_Images())
    enc = create_vision_encoder(tiny_dinov2, pooling="concat")
    calls = []
    forward = enc._forward_layers
    enc._forward_layers = lambda batch, layers: calls.append((len(batch), list(layers))) or forward(
        batch, layers)
    common = dict(cache=cache, batch_size=4, num_workers=0, shard_rows=4, quiet=True)
    got = encode_source_layers(enc, src, [3, 1], **common)
    assert list(got) == [3, 1] and not any(r.cache_hit for r in got.values())
    # 6 rows in shards of 4: two forward passes give both layers (besides one-image width probes)
    assert [c for c in calls if c[0] > 1] == [(4, [3, 1]), (2, [3, 1])]
    for n, res in got.items():
        # the same entry a single-layer encode reads: a hit, with the same rows
        alone = encode_source(enc.at_layer(n), src, **common)
        assert alone.cache_hit and alone.embeddings.directory == res.embeddings.directory
        expect = create_vision_encoder(tiny_dinov2, pooling="concat", layer=n).encode(_Images.imgs)
        assert np.allclose(res.embeddings.to_numpy(), expect.numpy(), atol=2e-3)  # fp16 storage
    calls.clear()
    again = encode_source_layers(enc, src, [1, 2, 3], **common)
    assert again[1].cache_hit and again[3].cache_hit and not again[2].cache_hit
    assert [c for c in calls if c[0] > 1] == [(4, [2]), (2, [2])]  # only the missing layer


def test_cli_encode_vision_layers(tiny_dinov2, tmp_path):
    args = ["encode", "-m", str(tiny_dinov2), "-d", "shapes:test?n=40", "--vision-layer", "1,3",
            "--cache-dir", str(tmp_path), "--num-workers", "0", "-q"]
    first = invoke(*args, catch_exceptions=True)
    assert first.exit_code == 0, first.output
    rows = [line.split() for line in first.output.splitlines() if line.startswith("images@")]
    assert [r[0] for r in rows] == ["images@1", "images@3"] and all("miss" in r for r in rows)
    again = invoke(*args, catch_exceptions=True)
    assert again.output.count(" hit ") == 2, again.output
    bad = invoke(*[a if a != "1,3" else "a,b" for a in args], catch_exceptions=True)
    assert bad.exit_code == 2 and "block numbers" in bad.output
