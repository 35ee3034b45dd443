"""MMVP-VLM with an aligned pair, as SAIL's ``evaluation/mmvp.py`` runs it: each statement,
prefixed ``"a photo of "``, against its pair's two images; scored by
`alignprobe.metrics.mmvp_scores` (softmax over the two images, a pair right when both
statements pick their own image, accuracy per category and the mean of the categories)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from alignprobe.metrics import mmvp_scores
from alignprobe.metrics.segmentation import slug
from alignprobe.probe.data.datasets import decode_image
from alignprobe.probe.data.readers_mmvp import read_mmvp
from alignprobe.probe.evals._embed import Projection, embed_images, embed_texts

#: reference: ``text1 = 'a photo of ' + statement1`` (evaluation/mmvp.py)
STATEMENT_PREFIX = "a photo of "


def mmvp_similarities(vision_encoder, text_encoder, image_to_space: Projection,
                      text_to_space: Projection, data_dir: str | Path, *,
                      batch_size: int = 64, progress: bool = True):
    """``(pairs, s)``: the pairs of ``DIR/Questions.csv`` and ``(n_pairs, 2, 2)`` blocks
    ``s[pair, statement, image]``."""
    pairs = read_mmvp(data_dir)
    statements = [STATEMENT_PREFIX + st for p in pairs for st in p.statements]
    loaders = [partial(decode_image, path, str(q), path)
               for p in pairs for q, path in zip(p.ids, p.image_paths)]
    text = embed_texts(text_encoder, text_to_space, statements, progress=progress,
                       desc="mmvp statements")
    image = embed_images(vision_encoder, image_to_space, loaders, batch_size=batch_size,
                         progress=progress, desc="mmvp images")
    n = len(pairs)
    text, image = text.reshape(n, 2, -1), image.reshape(n, 2, -1)
    return pairs, torch.einsum("nsd,nid->nsi", text, image)


def evaluate_mmvp(vision_encoder, text_encoder, image_to_space: Projection,
                  text_to_space: Projection, data_dir: str | Path, *, batch_size: int = 64,
                  progress: bool = True) -> dict:
    """``{"mmvp": mean over categories, "mmvp_<category>": accuracy}`` as fractions."""
    pairs, s = mmvp_similarities(vision_encoder, text_encoder, image_to_space, text_to_space,
                                 data_dir, batch_size=batch_size, progress=progress)
    out = mmvp_scores(s.numpy(), [p.targets for p in pairs], [p.category for p in pairs])
    row = {"mmvp": out["mean"]}
    row.update({f"mmvp_{slug(c)}": v for c, v in out["per_category"].items()})
    return row
