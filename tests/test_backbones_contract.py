"""The registry contract, run: every family of the catalog has a tiny registered stand-in (`test-*`,
the real entry's loading settings on random weights built from a config), and every stand-in and
every control builds by name and encodes: shape (n, spec.dim), float32, finite, deterministic, and
one item's features do not depend on the batch it came in."""
import pytest
import torch

import helpers
from alignprobe.backbones import create_text_encoder, create_vision_encoder, list_encoders

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Families whose stand-in would need what tests cannot build: remote code (NV-Embed-v2, GTE v1.5),
# a byte-level BPE tokenizer (gte-Qwen2), a T5 encoder with its own encode (sentence-T5), packaged or
# published checkpoints (EfficientNet-Lite, AIMv2), or a fixed local copy (dinov2-s-focus).
NOT_STOOD_IN = {"nv-embed", "gte", "sentence-t5", "efficientnet-lite", "aimv2"}
ITEMS = {"vision": helpers.images(3), "text": helpers.SENTENCES}


def _real_families() -> set[tuple[str, str]]:
    names = set(helpers.TINY_ENCODERS)
    return {(s.modality, s.family) for s in list_encoders()
            if not s.is_control and s.name not in names and s.source != "local"}


def test_every_family_of_the_catalog_has_a_tiny_stand_in(tiny_registry):
    covered = {(s.modality, s.family) for s in list_encoders() if s.name in tiny_registry}
    missing = {f for f in _real_families() - covered if f[1] not in NOT_STOOD_IN}
    assert not missing, f"register a tiny stand-in in helpers.TINY_ENCODERS for {sorted(missing)}"
    assert covered <= _real_families()  # each stand-in names a family that exists


def _runnable(tiny_registry):
    return [s.name for s in list_encoders() if s.is_control or s.name in tiny_registry]


def test_every_stand_in_and_control_builds_and_encodes(tiny_registry):
    names = _runnable(tiny_registry)
    assert set(tiny_registry) <= set(names) and {"pixels", "hog", "bow"} <= set(names)
    for name in names:
        spec = next(s for s in list_encoders() if s.name == name)
        create = create_vision_encoder if spec.modality == "vision" else create_text_encoder
        encoder = create(name, device="cpu")
        items = ITEMS[spec.modality]
        z = encoder.encode(items)
        assert z.shape == (len(items), encoder.dim) and z.dtype == torch.float32, name
        if spec.dim is not None:
            assert encoder.dim == spec.dim, name
        assert torch.isfinite(z).all(), name
        assert torch.equal(z, encoder.encode(items)), name  # deterministic
        torch.testing.assert_close(encoder.encode(items[1:2]), z[1:2], atol=1e-5, rtol=1e-4, msg=name)


def test_stand_ins_keep_the_loading_settings_of_the_entry_they_stand_in_for(tiny_registry):
    for name, (modality, _, like) in helpers.TINY_ENCODERS.items():
        spec = next(s for s in list_encoders() if s.name == name)
        real = next(s for s in list_encoders() if s.name == like)
        assert (spec.pooling, spec.model_kwargs, spec.family) == (real.pooling, real.model_kwargs, real.family)
        assert spec.source == "local" and spec.path is not None and spec.modality == modality

