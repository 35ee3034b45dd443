"""Helpers shared by the tests: the CLI runner, tiny images, planted paired features, and tiny
model folders built from configs.

Tiny models have random weights and are saved the way their library saves them (transformers'
`save_pretrained`, timm's `save_for_hf`, sentence-transformers' `save`), so a test loads them back
through the toolkit's real loading path. The default shape (hidden 32, 2 layers, 32 px images,
patch 8) keeps a forward pass to milliseconds on the 2-core CI machine.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result
from PIL import Image

# ---------------------------------------------------------------------------------------------- CLI


def invoke(*args, catch_exceptions: bool = False, command=None) -> Result:
    """Run the CLI (or `command`, one of its commands) in-process; arguments may be paths or numbers.

    `catch_exceptions=False` by default so an unexpected exception fails the test with its own
    traceback; pass True to test a command's exit code and message on bad input.
    """
    if command is None:
        # imported here so that tests which only need images or features do not import the whole CLI
        from alignprobe.cli import main as command
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=catch_exceptions)


# ------------------------------------------------------------------------------------------- images

SIZES = ((40, 56), (64, 48), (32, 32))  # (height, width): odd shapes exercise resize and crop


def images(n: int = 3, seed: int = 0, sizes: Sequence[tuple[int, int]] = SIZES) -> list[Image.Image]:
    """`n` random RGB images; image i has size `sizes[i % len(sizes)]` given as (height, width)."""
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(*sizes[i % len(sizes)], 3) * 255).astype(np.uint8)) for i in range(n)]


def write_images(folder: Path, n: int, size: tuple[int, int] = (8, 8), prefix: str = "im") -> list[Path]:
    """`n` solid-colour PNGs `{prefix}{i}.png` in `folder` (created), each a different colour."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i}.png"
        Image.new("RGB", size, ((10 * i) % 256, 20, 30)).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------- features


def planted(n: int, seed: int = 0, d_img: int = 24, d_txt: int = 16, latent: int = 6, noise: float = 0.3,
            structure: bool = True, extra: bool = False):
    """Paired features that share a latent: image = z A + noise, text = z B + noise (float32).

    `structure=False` draws the text from an independent latent (no alignment to find);
    `extra=True` adds a second caption per image, z C + noise, as a third array.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    zt = z if structure else rng.standard_normal((n, latent))
    image = z @ rng.standard_normal((latent, d_img)) + noise * rng.standard_normal((n, d_img))
    text = zt @ rng.standard_normal((latent, d_txt)) + noise * rng.standard_normal((n, d_txt))
    out = [image.astype(np.float32), text.astype(np.float32)]
    if extra:
        more = zt @ rng.standard_normal((latent, d_txt)) + noise * rng.standard_normal((n, d_txt))
        out.append(more.astype(np.float32))
    return tuple(out)


# ------------------------------------------------------------------------------------- tiny models

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_VISION = dict(TINY, image_size=32, patch_size=8)
PROCESSOR = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 3,
             "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a an the photo picture of cat cats dog dogs on in red blue green sky car tree man woman snow "
    "playing two ##s"
).split()
SENTENCES = ["a photo of a cat", "two dogs playing in the snow on a blue sky", "red car"]

# family -> (config class, model class) names in transformers; registers are DINOv2's extra tokens
HF_VISION = {
    "dinov2": ("Dinov2Config", "Dinov2Model", {}),
    "dinov2_reg": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", {"num_register_tokens": 4}),
    "vit": ("ViTConfig", "ViTModel", {}),
    "vit_mae": ("ViTMAEConfig", "ViTMAEModel", {}),
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {}),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", {}),
    "ijepa": ("IJepaConfig", "IJepaModel", {}),
}


def save_hf_vision(folder: Path, family: str = "dinov2", processor: dict | None = None, seed: int = 0,
                   **config) -> Path:
    """A tiny transformers vision model of `family` (see `HF_VISION`) with its preprocessor
    config, saved to `folder`; `config` overrides `TINY_VISION`."""
    import transformers as T

    config_cls, model_cls, family_config = HF_VISION[family]
    torch.manual_seed(seed)
    model = getattr(T, model_cls)(getattr(T, config_cls)(**{**TINY_VISION, **family_config, **config}))
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR if processor is None else processor))
    return folder


def save_hf_text(folder: Path, seed: int = 0, vocab: Sequence[str] = VOCAB, **config) -> Path:
    """A tiny BERT with a word-piece tokenizer over `vocab`, saved to `folder`; `config` overrides
    `TINY` (max length 64)."""
    import transformers as T

    torch.manual_seed(seed)
    folder = Path(folder)
    T.BertModel(T.BertConfig(**{"vocab_size": len(vocab), "max_position_embeddings": 64, **TINY, **config})) \
        .save_pretrained(folder)
    T.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return folder


def save_sentence_transformer(folder: Path, seed: int = 0) -> Path:
    """A tiny sentence-transformers model (BERT, mean pooling, normalised) saved to `folder`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    folder = Path(folder)
    bert = save_hf_text(folder.with_name(folder.name + "-bert"), seed=seed)
    word = Transformer(str(bert), max_seq_length=32)
    st = SentenceTransformer(modules=[word, Pooling(TINY["hidden_size"], pooling_mode="mean"), Normalize()],
                             device="cpu")
    st.save(str(folder))
    return folder


TIMM_VIT = "vit_tiny_patch16_224"


def timm_vit(seed: int = 0, depth: int = 2):
    """A tiny timm ViT (32 px, patch 8, width 32) and the keyword arguments that rebuild it
    (without `num_classes`, which the toolkit sets itself)."""
    import timm

    torch.manual_seed(seed)
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2)
    return timm.create_model(TIMM_VIT, pretrained=False, num_classes=0, **kw).eval(), kw


def save_timm(folder: Path, seed: int = 0) -> Path:
    """A tiny timm ViT exported with timm's own `save_for_hf` (config.json + weights) to `folder`."""
    from timm.models._hub import save_for_hf

    model, _ = timm_vit(seed)
    save_for_hf(model, Path(folder), safe_serialization=True)
    return Path(folder)


# ------------------------------------------------------------------------------ tiny registry entries

# Like timm's `test_*` models: one tiny entry per family of the real catalog, registered under
# "test-<family>", with the loading settings (pooling, model class, model kwargs) of the real entry
# named here and weights from a tiny folder; `tiny_model` family -> real entry it stands in for.
TINY_ENCODERS = {
    "test-dinov2": ("vision", "dinov2", "dinov2-vitb14"),
    "test-dinov2-reg": ("vision", "dinov2_reg", "dinov2-vitb14-reg"),
    "test-dino": ("vision", "vit", "dino-vitb16"),
    "test-mae": ("vision", "vit_mae", "mae-vitb16"),
    "test-clip": ("vision", "clip", "clip-vitl14"),
    "test-siglip": ("vision", "siglip", "siglip-vitb16-224"),
    "test-ijepa": ("vision", "ijepa", "ijepa-vith14"),
    "test-ibot": ("vision", "timm", "ibot-vitb16"),
    "test-e5": ("text", "bert", "e5-large-v2"),
    "test-bge": ("text", "bert", "bge-large-en-v1.5"),
    "test-minilm": ("text", "sentence_transformers", "all-minilm-l6-v2"),
}


def tiny_spec(name: str, folder: Path):
    """The registry entry `name` of `TINY_ENCODERS`: the real entry's loading settings on `folder`."""
    from alignprobe.backbones import resolve_spec

    modality, _, like = TINY_ENCODERS[name]
    real, local = resolve_spec(like, modality), resolve_spec(str(folder), modality)
    width = TINY["hidden_size"] * (2 if real.pooling == "concat" else 1)
    return dataclasses.replace(
        local, name=name, pooling=real.pooling, model_kwargs=real.model_kwargs,
        # a transformers entry names its model class; a timm folder's own config names the architecture
        model_class=real.model_class if real.source == "transformers" else local.model_class,
        family=real.family, dim=width, license="apache-2.0",
        notes=f"tiny random stand-in for {like} (tests only; weights from a checkpoint folder built from a config)")


def tiny_text_encoder(folder: Path):
    """A tiny sentence-transformers model saved in ``folder``, loaded as alignprobe's text encoder (CPU, mean)."""
    from alignprobe import create_text_encoder

    return create_text_encoder(save_sentence_transformer(folder), pooling="mean", device="cpu")


class RecordingEncoder:
    """Wraps an encoder and records the texts of every batch it is given."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def forward(self, batch):
        self.batches.append(list(batch))
        return self.inner.forward(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)
