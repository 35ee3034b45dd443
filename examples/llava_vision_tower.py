"""A SAIL run's aligned vision encoder as LLaVA's vision tower, end to end and offline.

    python examples/llava_vision_tower.py [WORK_DIR]

1. builds a tiny DINOv2 from a config (random weights; a real run would name e.g. ``dinov2-l``),
2. trains SAIL heads on it against the bag-of-words control for a few epochs on built-in shapes,
3. exports the vision side with `alignprobe.export_vision_tower` (= ``alignprobe export``),
4. loads it back with ``transformers.AutoModel`` / ``AutoImageProcessor`` (no remote code),
5. builds a tiny ``LlavaForConditionalGeneration`` around it (a Llama built from a config), loads
   the exported weights into its vision tower, and runs forward and ``generate`` on an image.

The language model and the projector here are untrained, so the generated ids are noise: what the
script shows is the wiring. With a real LLaVA the projector has to be trained on the new features
(the paper's LLaVA recipe: projector pre-training, then instruction tuning); see the README section
"Use the aligned encoder in an MLLM".
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import alignprobe
from alignprobe.config import EncodeOptions
from alignprobe.probe.pipelines.train import SailRunConfig, train_pair


def tiny_dinov2(folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 36}, "crop_size": {"height": 32,
         "width": 32}, "do_center_crop": True, "resample": 3, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225]}))
    return folder


def main(work: Path) -> None:
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    backbone = tiny_dinov2(work / "tiny-dinov2")
    run = work / "run"
    config = SailRunConfig(vision=str(backbone), text="bow", pairs="shapes:train?n=128", labelled=None,
                           retrieval=None, vision_pooling="concat",   # CLS ++ mean patch, as SAIL's DINOv2
                           train=dict(out_dim=16, width=2, epochs=3, text_head="linear"))
    train_pair(config, run, options=EncodeOptions(quiet=True, num_workers=0, cache_dir=str(work / "cache")))

    tower_dir = alignprobe.export_vision_tower(run, work / "tower", overwrite=True)
    print("exported:", sorted(p.name for p in tower_dir.iterdir()))

    tower = AutoModel.from_pretrained(tower_dir).eval()          # AlignedVisionTowerModel, no remote code
    processor = AutoImageProcessor.from_pretrained(tower_dir, backend="pil")
    image = Image.fromarray((np.random.RandomState(0).rand(48, 40, 3) * 255).astype(np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = tower(pixel_values=pixels)
    n_patches = (tower.config.image_size // tower.config.patch_size) ** 2
    print("tower: last_hidden_state", tuple(out.last_hidden_state.shape), "pooler_output",
          tuple(out.pooler_output.shape), f"(1 global + {n_patches} patch tokens)")

    image_token = 63
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=AutoConfig.from_pretrained(tower_dir),
        text_config=LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=image_token, image_seq_length=n_patches,
        vision_feature_layer=-1, vision_feature_select_strategy="default")).eval()   # the patch tokens
    llava.model.vision_tower.load_state_dict(tower.state_dict())
    prompt = torch.tensor([[1] + [image_token] * n_patches + [5, 6, 7]])   # <s> <image>x16 ...
    with torch.no_grad():
        feats = llava.get_image_features(pixel_values=pixels, vision_feature_layer=-1,
                                         vision_feature_select_strategy="default").pooler_output[0]
        same = torch.allclose(feats, llava.model.multi_modal_projector(out.last_hidden_state[0, 1:]), atol=1e-6)
        logits = llava(input_ids=prompt, pixel_values=pixels).logits
        generated = llava.generate(input_ids=prompt, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    print("llava: image features", tuple(feats.shape), "= projector(tower patch tokens):", same)
    print("llava: logits", tuple(logits.shape), "generated ids", generated[0, prompt.shape[1]:].tolist())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
