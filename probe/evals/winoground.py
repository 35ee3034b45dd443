"""Winoground with an aligned pair: the 2 x 2 caption-image similarities of every example,
scored as SAIL's ``evaluation/winoground.py`` does (`alignprobe.metrics.winoground_scores`)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from alignprobe.metrics import winoground_scores
from alignprobe.probe.data.datasets import decode_image
from alignprobe.probe.data.readers_winoground import read_winoground
from alignprobe.probe.evals._embed import Projection, embed_images, embed_texts


def winoground_similarities(vision_encoder, text_encoder, image_to_space: Projection,
                            text_to_space: Projection, data_dir: str | Path, *,
                            batch_size: int = 64, progress: bool = True):
    """``(examples, s)``: the examples of ``DIR/examples.jsonl`` and their ``(n, 2, 2)``
    similarity blocks ``s[example, caption, image]`` (cosine in the shared space; the
    reference compares logits ``exp(t) * cos + b``, which orders the same)."""
    examples = read_winoground(data_dir)
    captions = [c for ex in examples for c in ex.captions]
    loaders = [partial(decode_image, p, f"{ex.id}/image_{k}", p)
               for ex in examples for k, p in enumerate(ex.image_paths)]
    text = embed_texts(text_encoder, text_to_space, captions, progress=progress,
                       desc="winoground captions")
    image = embed_images(vision_encoder, image_to_space, loaders, batch_size=batch_size,
                         progress=progress, desc="winoground images")
    n = len(examples)
    text, image = text.reshape(n, 2, -1), image.reshape(n, 2, -1)
    return examples, torch.einsum("ncd,nid->nci", text, image)


def evaluate_winoground(vision_encoder, text_encoder, image_to_space: Projection,
                        text_to_space: Projection, data_dir: str | Path, *,
                        batch_size: int = 64, progress: bool = True) -> dict:
    """``{"winoground_text", "winoground_image", "winoground_group"}`` as fractions."""
    _, s = winoground_similarities(vision_encoder, text_encoder, image_to_space, text_to_space,
                                   data_dir, batch_size=batch_size, progress=progress)
    scores = winoground_scores(s.numpy())
    return {f"winoground_{k}": scores[k] for k in ("text", "image", "group")}
