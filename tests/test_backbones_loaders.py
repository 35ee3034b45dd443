"""Every loader kind, on tiny random models saved to disk and loaded back the real way.

Tiny models: hidden 32, 2 layers, 32 px images, patch 8. Each encoder must give
(n, dim) float32 with the spec's dim, deterministically, and equal the pooling
computed by hand from the model's own outputs.
"""

import json
import pickle
import shutil

import pytest
import torch
from PIL import Image
from alignprobe.backbones import (
    EncoderSpec,
    Preprocessing,
    check_available,
    create_text_encoder,
    create_vision_encoder,
    register_encoder,
    resolve_spec,
    unregister_encoder,
)

from alignprobe.errors import EncoderNotAvailableError, UnknownEncoderError, ValidationError
from helpers import SENTENCES, images, timm_vit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model):
    """Tiny transformers models saved the way the library saves them."""
    return {key: tiny_model(family) for key, family in
            {"dinov2": "dinov2", "dinov2_reg": "dinov2_reg", "mae": "vit_mae", "bert": "bert"}.items()}


def _hf_cache(root, repo_id, src):
    """Lay out `src` as the Hugging Face cache entry of `repo_id` (as `hf download` leaves it)."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(src, repo / "snapshots" / COMMIT)
    return root


def _tokens(model, x, **kw):
    with torch.inference_mode():
        return model(pixel_values=x, **kw).last_hidden_state.float()


# ------------------------------------------------------------------ transformers vision


def test_transformers_vision_local_dir_concat_matches_hand_pooling(tiny_dirs):
    from transformers import Dinov2Model

    enc = create_vision_encoder(tiny_dirs["dinov2"], pooling="concat")
    assert enc.spec.source == "local" and enc.spec.local_format == "transformers"
    assert enc.dim == 64 and enc.device.type == "cpu" and enc.dtype == torch.float32
    imgs = images()
    z = enc.encode(imgs)
    assert z.shape == (3, 64) and z.dtype == torch.float32
    assert torch.equal(z, enc.encode(imgs))  # deterministic
    assert not z.is_inference() and z.is_contiguous()  # usable in training code
    ref_model = Dinov2Model.from_pretrained(tiny_dirs["dinov2"]).eval()
    x = enc.collate([enc.preprocess(im) for im in imgs])
    assert x.shape == (3, 3, 32, 32)
    h = _tokens(ref_model, x)
    assert h.shape[1] == 1 + 16
    expect = torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=1)
    assert torch.allclose(z, expect, atol=1e-5)


def test_registers_are_excluded_from_the_patch_mean(tiny_dirs):
    from transformers import Dinov2WithRegistersModel

    enc = create_vision_encoder(tiny_dirs["dinov2_reg"], pooling="concat")
    imgs = images(2)
    z = enc.encode(imgs)
    h = _tokens(
        Dinov2WithRegistersModel.from_pretrained(tiny_dirs["dinov2_reg"]).eval(),
        enc.collate([enc.preprocess(im) for im in imgs]),
    )
    assert h.shape[1] == 1 + 4 + 16
    assert torch.allclose(z[:, :32], h[:, 0], atol=1e-5)
    assert torch.allclose(z[:, 32:], h[:, 5:].mean(1), atol=1e-5)
    assert not torch.allclose(z[:, 32:], h[:, 1:].mean(1), atol=1e-3)
    for pooling, dim in [("cls", 32), ("mean", 32), ("pooler", 32)]:
        assert create_vision_encoder(tiny_dirs["dinov2_reg"], pooling=pooling).encode(
            imgs
        ).shape == (2, dim)


def test_mae_keeps_every_patch_deterministically(tiny_dirs):
    from transformers import ViTMAEModel

    enc = create_vision_encoder(tiny_dirs["mae"], pooling="mean", mask_ratio=0.0)
    imgs = images(2)
    z1, z2 = enc.encode(imgs), enc.encode(imgs)
    assert torch.equal(z1, z2)
    model = ViTMAEModel.from_pretrained(tiny_dirs["mae"], mask_ratio=0.0).eval()
    h = _tokens(model, enc.collate([enc.preprocess(im) for im in imgs]))
    assert h.shape[1] == 1 + 16  # nothing masked
    assert torch.allclose(z1, h[:, 1:].mean(1), atol=1e-5)
    assert enc.manifest()["model_kwargs"] == {"mask_ratio": 0.0}
    # the default 75% masking drops patches, which the encoder refuses rather than pooling a subset
    with pytest.raises(ValidationError, match="dropped"):
        create_vision_encoder(tiny_dirs["mae"]).encode(imgs)


def test_hf_id_resolves_through_the_local_hub_cache(tiny_dirs, tmp_path, monkeypatch):
    _hf_cache(tmp_path, "tiny-org/tiny-dinov2", tiny_dirs["dinov2"])
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = resolve_spec("hf:tiny-org/tiny-dinov2", "vision")
    check_available(spec)
    enc = create_vision_encoder("hf:tiny-org/tiny-dinov2")
    assert enc.spec.pooling == "mean" and enc.dim == 32
    assert enc.spec.preprocessing == Preprocessing(
        32, 1.0, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash"
    )
    # a resolved spec can be passed back in as is (revision and all)
    assert torch.equal(create_vision_encoder(enc.spec).encode(images(1)), enc.encode(images(1)))
    local = create_vision_encoder(tiny_dirs["dinov2"], pooling="mean")
    imgs = images()
    assert torch.equal(enc.encode(imgs), local.encode(imgs))
    m = enc.manifest()
    assert (
        m["hub_id"] == "tiny-org/tiny-dinov2"
        and m["revision"] == COMMIT
        and m["local_path"] is None
    )

    # a registered name pointing at the same repo gets the registry's pooling and dim
    register_encoder(
        EncoderSpec(
            name="test-tiny-dinov2",
            modality="vision",
            source="transformers",
            hub_id="tiny-org/tiny-dinov2",
            model_class="transformers:Dinov2Model",
            pooling="concat",
            dim=64,
            preprocessing=Preprocessing(32, 1.0, (0.5,) * 3, (0.5,) * 3),
            license="n/a",
        )
    )
    try:
        named = create_vision_encoder("test-tiny-dinov2")
        assert named.encode(imgs).shape == (3, 64)
        assert create_vision_encoder("tiny-org/tiny-dinov2").spec.name == "test-tiny-dinov2"
    finally:
        unregister_encoder("test-tiny-dinov2")


def test_refuses_checkpoints_that_would_leave_random_layers(tiny_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(tiny_dirs["dinov2"], partial)
    sd = load_file(partial / "model.safetensors")
    save_file(
        {k: v for k, v in sd.items() if not k.startswith("encoder.layer.1.mlp")},
        partial / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(EncoderNotAvailableError, match="randomly initialised"):
        create_vision_encoder(partial)
    # a checkpoint of another architecture does not fit either
    with pytest.raises(EncoderNotAvailableError, match="does not fit"):
        create_vision_encoder(tiny_dirs["dinov2"], model_class="transformers:ViTMAEModel")


def test_manifest_of_a_local_dir_has_its_fingerprint(tiny_dirs):
    enc = create_vision_encoder(tiny_dirs["dinov2"], dtype="fp32", pooling="concat")
    m = enc.manifest()
    json.dumps(m)
    assert m["local_path"]["path"] == str(tiny_dirs["dinov2"].resolve())
    files = {f["file"]: f for f in m["local_path"]["files"]}
    assert files["model.safetensors"]["size"] > 0 and "mtime_ns" in files["model.safetensors"]
    assert m["pooling"] == "concat" and m["dim"] == 64 and m["dtype"] == "float32"
    assert m["preprocessing"]["size"] == 32 and "transformers" in m["library_versions"]


def test_bf16_on_cpu_runs_and_returns_float32(tiny_dirs):
    enc = create_vision_encoder(tiny_dirs["dinov2"], dtype="bf16")
    assert enc.dtype == torch.bfloat16
    z = enc.encode(images(2))
    assert z.dtype == torch.float32 and z.shape == (2, 32)
    with pytest.raises(ValidationError, match="dtype"):
        create_vision_encoder(tiny_dirs["dinov2"], dtype="int8")


# ------------------------------------------------------------------ timm


def test_timm_checkpoint_file_through_timm_loading(tmp_path):
    model, kw = timm_vit()
    sd = model.state_dict()
    # an iBOT/DINO-style training checkpoint: wrapped, prefixed, with a training-only parameter
    wrapped = {"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 100}
    wrapped["teacher"]["backbone.masked_embed"] = torch.zeros(1, 32)
    ckpt = tmp_path / "checkpoint_teacher.pth"
    torch.save(wrapped, ckpt)
    enc = create_vision_encoder("timm:vit_tiny_patch16_224", checkpoint=ckpt, pooling="cls", **kw)
    assert enc.spec.preprocessing.size == 32 and enc.dim == 32
    imgs = images()
    z = enc.encode(imgs)
    with torch.inference_mode():
        feats = model.forward_features(enc.collate([enc.preprocess(im) for im in imgs]))
    assert torch.allclose(z, feats[:, 0], atol=1e-5)
    assert torch.equal(z, enc.encode(imgs))
    m = enc.manifest()
    assert m["checkpoint"]["size"] == ckpt.stat().st_size and "timm" in m["library_versions"]
    assert any("masked_embed" in note for note in m["load_notes"])
    mean = create_vision_encoder("timm:vit_tiny_patch16_224", checkpoint=ckpt, pooling="mean", **kw)
    assert torch.allclose(mean.encode(imgs), feats[:, 1:].mean(1), atol=1e-5)
    pooled = create_vision_encoder(
        "timm:vit_tiny_patch16_224", checkpoint=ckpt, pooling="pooler", **kw
    )
    with torch.inference_mode():
        assert torch.allclose(
            pooled.encode(imgs), model.forward_head(feats, pre_logits=True), atol=1e-5
        )


def test_timm_checkpoint_that_does_not_fit_is_refused(tmp_path):
    model, kw = timm_vit()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(EncoderNotAvailableError, match="randomly initialised"):
        create_vision_encoder(
            "timm:vit_tiny_patch16_224", checkpoint=tmp_path / "partial.pth", **kw
        )
    kw["embed_dim"] = 48
    with pytest.raises(EncoderNotAvailableError, match="do not fit"):
        create_vision_encoder(
            "timm:vit_tiny_patch16_224", checkpoint=tmp_path / "partial.pth", **kw
        )


def test_timm_local_dir_export(tmp_path):
    from timm.models._hub import save_for_hf

    model, _ = timm_vit()
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    enc = create_vision_encoder(tmp_path / "export", pooling="concat")
    assert enc.spec.local_format == "timm" and enc.dim == 64 and enc.spec.preprocessing.size == 32
    imgs = images(2)
    with torch.inference_mode():
        feats = model.forward_features(enc.collate([enc.preprocess(im) for im in imgs]))
    assert torch.allclose(
        enc.encode(imgs), torch.cat([feats[:, 0], feats[:, 1:].mean(1)], 1), atol=1e-5
    )


# ------------------------------------------------------------------ transformers text


def test_transformers_text_local_dir_poolings(tiny_dirs):
    from transformers import AutoTokenizer, BertModel

    enc = create_text_encoder(tiny_dirs["bert"])
    assert enc.spec.pooling == "mean" and enc.dim == 32 and enc.spec.max_length == 64
    with pytest.raises(UnknownEncoderError, match="text model"):
        create_vision_encoder(tiny_dirs["bert"])  # a tokenizer and no image settings
    z = enc.encode(SENTENCES)
    assert z.shape == (3, 32) and z.dtype == torch.float32
    assert torch.equal(z, enc.encode(SENTENCES))
    tok = AutoTokenizer.from_pretrained(tiny_dirs["bert"])
    model = BertModel.from_pretrained(tiny_dirs["bert"]).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(z, (h * m).sum(1) / m.sum(1), atol=1e-5)
    cls = create_text_encoder(tiny_dirs["bert"], pooling="cls").encode(SENTENCES)
    assert torch.allclose(cls, h[:, 0], atol=1e-5)
    last = create_text_encoder(tiny_dirs["bert"], pooling="last").encode(SENTENCES)
    lengths = batch["attention_mask"].sum(1) - 1
    assert torch.allclose(last, h[torch.arange(3), lengths], atol=1e-5)
    # batching (right padding) does not change a sentence's embedding
    alone = torch.cat([enc.encode([s]) for s in SENTENCES])
    assert torch.allclose(z, alone, atol=1e-5)


def test_text_prefix_and_truncation(tiny_dirs):
    enc = create_text_encoder(tiny_dirs["bert"], prefix="query: ", max_length=4)
    assert enc.preprocess("a cat") == "query: a cat"
    batch = enc.collate([enc.preprocess(s) for s in SENTENCES])
    assert batch["input_ids"].shape[1] == 4 and batch["input_ids"].dtype == torch.int64
    assert enc.manifest()["prefix"] == "query: " and enc.manifest()["max_length"] == 4
    with pytest.raises(ValidationError, match="str"):
        enc.preprocess(3)


def test_preprocessors_pickle_and_run_in_dataloader_workers(tiny_dirs):
    text = create_text_encoder(tiny_dirs["bert"])
    vision = create_vision_encoder(tiny_dirs["dinov2"])
    for enc, items in [(text, SENTENCES), (vision, images())]:
        clone = pickle.loads(pickle.dumps(enc.preprocessor))
        a = enc.collate([enc.preprocess(x) for x in items])
        b = clone.collate([clone.preprocess(x) for x in items])
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.equal(a, b)
    pre = vision.preprocessor
    loader = torch.utils.data.DataLoader(
        images(),
        batch_size=3,
        num_workers=1,
        collate_fn=lambda xs: pre.collate([pre.preprocess(x) for x in xs]),
    )
    (batch,) = list(loader)
    assert torch.equal(vision.forward(batch), vision.encode(images()))


# ------------------------------------------------------------------ sentence-transformers


def test_sentence_transformers_local_dir(tiny_model):
    from sentence_transformers import SentenceTransformer

    folder = tiny_model("sentence_transformers")
    ref = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES, convert_to_tensor=True)

    enc = create_text_encoder(folder)
    assert (
        enc.spec.local_format == "sentence-transformers"
        and enc.spec.pooling == "encode"
        and enc.dim == 32
    )
    z = enc.encode(SENTENCES)
    assert z.shape == (3, 32) and torch.allclose(z, ref, atol=1e-5)
    mean = create_text_encoder(folder, pooling="mean").encode(SENTENCES)
    assert torch.allclose(torch.nn.functional.normalize(mean, dim=1), ref, atol=1e-5)
    assert create_text_encoder(folder, pooling="cls").encode(SENTENCES).shape == (3, 32)


@pytest.mark.slow  # real weights; test_sentence_transformers_local_dir covers the loader on a tiny model
def test_minilm_matches_sentence_transformers_encode():
    from sentence_transformers import SentenceTransformer

    enc = create_text_encoder("minilm")
    assert enc.dim == 384 and enc.spec.pooling == "mean" and enc.spec.max_length == 256
    sentences = SENTENCES + ["A man riding a horse on the beach at sunset.", ""]
    z = enc.encode(sentences)
    ref = SentenceTransformer(enc.spec.path, device="cpu").encode(sentences, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(z, ref.float(), dim=1)
    assert (cos >= 0.999).all(), cos
    # alignprobe returns the raw mean; sentence-transformers normalises on top
    assert not torch.allclose(z.norm(dim=1), torch.ones(len(sentences)))
    native = create_text_encoder("minilm", pooling="encode").encode(sentences)
    assert torch.allclose(native, ref.float(), atol=1e-5)


# ------------------------------------------------------------------ controls


def test_pixel_and_hog_controls():
    imgs = images()
    pixels = create_vision_encoder("pixels")
    z = pixels.encode(imgs)
    assert z.shape == (3, 768) and torch.equal(z, create_vision_encoder("pixels").encode(imgs))
    hog = create_vision_encoder("hog")
    h = hog.encode(imgs)
    assert h.shape == (3, 1764) and torch.equal(h, hog.encode(imgs)) and h.abs().sum() > 0
    grey = Image.new("RGB", (50, 40), (90, 90, 90))
    assert hog.encode([grey]).abs().sum() == 0  # no gradients in a flat image
    flat = pixels.encode([grey])[0].reshape(3, 16, 16)
    assert torch.allclose(flat[0], torch.full((16, 16), (90 / 255 - 0.485) / 0.229), atol=1e-5)
    assert pixels.manifest()["is_control"] and hog.manifest()["control_params"]["orientations"] == 9


def test_random_vit_control_is_seeded_and_deterministic():
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    spec = resolve_spec("random-vit", "vision")
    assert spec.is_control and spec.kwargs == {"arch": "vit_small_patch16_224", "seed": 0}
    state = torch.random.get_rng_state()
    a = create_vision_encoder("random-vit", **kw)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    b = create_vision_encoder("random-vit", **kw)
    c = create_vision_encoder("random-vit", seed=1, **kw)
    imgs = images()
    za = a.encode(imgs)
    assert za.shape == (3, 32) and torch.equal(za, b.encode(imgs))
    assert not torch.allclose(za, c.encode(imgs))
    assert a.manifest()["control_params"]["seed"] == 0


def test_bow_control():
    bow = create_text_encoder("bow")
    z = bow.encode(["the cat sat on the mat", "The cat sat on the mat!", "dogs", ""])
    assert z.shape == (4, 2048)
    assert torch.equal(z[0], z[1])  # case and punctuation do not matter
    assert torch.allclose(z[:3].norm(dim=1), torch.ones(3)) and z[3].abs().sum() == 0
    # "the" twice: one bucket holds count 2 of the 6 words' norm sqrt(2^2 + 4)
    assert torch.isclose(z[0].max(), torch.tensor(2 / 8**0.5))
