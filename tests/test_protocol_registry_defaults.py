"""Registry defaults follow the SAIL reference: MAE = CLS after the final norm, NV-Embed-v2 without instruction."""
import numpy as np
import torch
from PIL import Image

from alignprobe.backbones import create_vision_encoder
from alignprobe.backbones.catalog import NV_EMBED_PREFIX
from alignprobe.backbones.resolve import resolve_spec


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


def test_mae_default_is_the_final_norm_cls_through_the_real_loading_path(tmp_path):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=8)
    T.ViTMAEModel(cfg).save_pretrained(tmp_path / "mae")
    T.ViTImageProcessor(do_resize=True, size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                        image_std=[0.5] * 3).save_pretrained(tmp_path / "mae")
    entry = resolve_spec("mae-b", "vision")
    # the local copy loaded with the entry's own settings (pooling, mask_ratio)
    enc = create_vision_encoder(tmp_path / "mae", device="cpu", pooling=entry.pooling, **dict(entry.model_kwargs))
    rng = np.random.RandomState(0)
    imgs = [Image.fromarray((rng.rand(40, 40, 3) * 255).astype(np.uint8)) for _ in range(2)]
    z = enc.encode(imgs)
    model = T.ViTMAEModel.from_pretrained(tmp_path / "mae", mask_ratio=0.0).eval()
    x = enc.collate([enc.preprocess(im) for im in imgs])
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        # CLS of the last block *after* the final LayerNorm (SAIL model/mae.py: x = self.norm(x); x[:, 0])
        after_norm = model.layernorm(out.hidden_states[-1])[:, 0]
    assert torch.allclose(z, after_norm, atol=1e-5)
    assert not torch.allclose(z, out.hidden_states[-1][:, 0], atol=1e-3)
    # the patch-mean variant is an override away
    mean = create_vision_encoder(tmp_path / "mae", device="cpu", pooling="mean", mask_ratio=0.0).encode(imgs)
    assert torch.allclose(mean, out.last_hidden_state[:, 1:].mean(1), atol=1e-5)
