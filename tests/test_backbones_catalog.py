"""Registry defaults follow the SAIL reference: MAE = CLS after the final norm, NV-Embed-v2 without instruction."""
import torch

from alignprobe.backbones import create_vision_encoder
from alignprobe.backbones.catalog import NV_EMBED_PREFIX
from alignprobe.backbones.resolve import resolve_spec
from helpers import images


def test_mae_entries_pool_the_cls_token_and_keep_the_mean_variant():
    for alias in ("mae-b", "mae-l", "mae-h"):
        spec = resolve_spec(alias, "vision")
        assert spec.pooling == "cls", alias
        assert dict(spec.model_kwargs) == {"mask_ratio": 0.0}
        assert "model/mae.py" in spec.notes


def test_nv_embed_default_has_no_instruction_and_the_variant_has_it():
    plain = resolve_spec("nv-embed", "text")
    assert plain.name == "nv-embed-v2" and plain.prefix == "" and plain.pooling == "encode"
    instruct = resolve_spec("nv-embed-instruct", "text")
    assert instruct.name == "nv-embed-v2-instruct" and instruct.prefix == NV_EMBED_PREFIX
    assert instruct.hub_id == plain.hub_id == "nvidia/NV-Embed-v2"
    assert plain.prefix != instruct.prefix  # different cache keys: the embeddings differ


def test_mae_default_is_the_final_norm_cls_through_the_real_loading_path(tiny_model):
    import transformers as T

    folder = tiny_model("vit_mae")
    entry = resolve_spec("mae-b", "vision")
    # the local copy loaded with the entry's own settings (pooling, mask_ratio)
    enc = create_vision_encoder(folder, device="cpu", pooling=entry.pooling, **dict(entry.model_kwargs))
    imgs = images(2)
    z = enc.encode(imgs)
    model = T.ViTMAEModel.from_pretrained(folder, mask_ratio=0.0).eval()
    x = enc.collate([enc.preprocess(im) for im in imgs])
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        # CLS of the last block *after* the final LayerNorm (SAIL model/mae.py: x = self.norm(x); x[:, 0])
        after_norm = model.layernorm(out.hidden_states[-1])[:, 0]
    assert torch.allclose(z, after_norm, atol=1e-5)
    assert not torch.allclose(z, out.hidden_states[-1][:, 0], atol=1e-3)
    # the patch-mean variant is an override away
    mean = create_vision_encoder(folder, device="cpu", pooling="mean", mask_ratio=0.0).encode(imgs)
    assert torch.allclose(mean, out.last_hidden_state[:, 1:].mean(1), atol=1e-5)
