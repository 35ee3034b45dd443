"""Open-vocabulary semantic segmentation with an aligned pair, following SAIL's
``evaluation/seg_eval.py`` (``SAILModelSegmentation``):

1. class prompts: each class word in every template (default the 80 CLIP ImageNet templates,
   the reference's ``openai_imagenet_template``) through the text encoder and the text head,
   normalised, averaged, renormalised; a class may have several words (synonyms), each its own
   query;
2. dense image features: every patch token through the vision head, in the layout of the
   pooled feature the head was trained on (``concat``: CLS ++ patch, as the reference's
   ``patch_mode`` in ``model/vision_model.py``; ``mean`` / ``cls``: the patch token), cosine
   against the queries; optionally with the reference's segmentation variant of the encoder's
   last block (``last_attention='qq'``, ``skip_last_mlp``: ``model/dinoforseg.py``, see
   `alignprobe.backbones.dense_block`; the reference's default, and ours, is the unchanged
   block);
3. sliding windows (``forward_slide``): windows of ``window`` pixels (default the encoder's
   input size) every ``stride`` pixels (default half a window, the reference's 448 / 224),
   the last ones shifted back inside the image, a window clipped to the image when the image is
   smaller; each window is resized to the encoder's input, its patch scores upsampled
   bilinearly to the window, and overlapping scores averaged;
4. per pixel: softmax over the queries of ``logit_scale * cos``, the best query of each class
   (``postprocess_result``), argmax; with ``background_threshold``, pixels whose best
   probability is below it become ``background_class`` (the reference's ``prob_thd``, default
   0 = off). The argmax does not depend on ``logit_scale``; the threshold does (pass the
   head's ``exp(t)``).

Difference from the reference: the image keeps its size unless ``short_side`` is set (the
reference resizes the short side to 448 first; predictions are then resized back).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alignprobe.backbones.dense_block import check_last_block
from alignprobe.errors import ValidationError
from alignprobe.metrics.segmentation import SegmentationAccumulator, iou_columns
from alignprobe.probe.data.readers_seg import SegmentationDataset, open_segmentation
from alignprobe.probe.data.templates import load_templates
from alignprobe.probe.evals._embed import Projection, embed_texts, to_space
from alignprobe.backbones.transforms import as_pil_rgb, pil_resample
from alignprobe.console import progress as tqdm


def class_text_embeddings(text_encoder, text_to_space: Projection, class_queries: Sequence,
                          templates=None, *, progress: bool = True):
    """``(queries (Q, d), query_class (Q,))``: one unit embedding per class word.

    ``class_queries``: per class a word or a list of synonyms; ``templates``: None (the 80
    CLIP ImageNet templates), a built-in set name, a file, or a list of ``{}`` strings.
    """
    temps = list(templates) if isinstance(templates, (list, tuple)) else load_templates(templates)
    words, owner = [], []
    for c, q in enumerate(class_queries):
        for w in ([q] if isinstance(q, str) else list(q)):
            words.append(w)
            owner.append(c)
    if not words:
        raise ValidationError("no class names to segment with; give at least one class")
    prompts = [t.format(w) for w in words for t in temps]
    z = embed_texts(text_encoder, text_to_space, prompts, progress=progress,
                    desc="class prompts").reshape(len(words), len(temps), -1)
    return F.normalize(z.mean(dim=1), dim=-1), torch.tensor(owner, dtype=torch.long)


def dense_features(vision_encoder, batch, *, last_attention: str = "qk",
                   skip_last_mlp: bool = False) -> torch.Tensor:
    """``(n, h, w, encoder.dim)``: per patch, the feature the vision head takes (see the module
    docstring, step 2), from PIL images or a ready ``(n, 3, H, W)`` input batch;
    ``last_attention`` / ``skip_last_mlp``: the reference's last-block variant (step 2)."""
    pooling = vision_encoder.spec.pooling
    if pooling not in ("concat", "mean", "cls"):
        raise ValidationError(
            f"dense features need a token pooling (concat, mean or cls); {vision_encoder.spec.name}"
            f" pools with {pooling!r}, which has no per-patch counterpart")
    grid, prefix = vision_encoder.encode_patches(batch, return_prefix=True,
                                                 last_attention=last_attention,
                                                 skip_last_mlp=skip_last_mlp)
    if pooling == "concat":
        if prefix is None or prefix.shape[1] == 0:
            raise ValidationError(f"{vision_encoder.spec.name}: pooling 'concat' needs a CLS token")
        cls = prefix[:, 0, None, None, :].expand(-1, grid.shape[1], grid.shape[2], -1)
        grid = torch.cat([cls, grid], dim=-1)
    if grid.shape[-1] != vision_encoder.dim:
        raise ValidationError(f"{vision_encoder.spec.name}: per-patch features are "
                              f"{grid.shape[-1]}-d but its pooled features are "
                              f"{vision_encoder.dim}-d")
    return grid


def _windows(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) boxes as the reference's ``forward_slide`` places them."""
    hc, wc = min(window, h), min(window, w)
    rows = max(h - hc + stride - 1, 0) // stride + 1
    cols = max(w - wc + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + hc, h), min(c * stride + wc, w)
            boxes.append((max(y2 - hc, 0), max(x2 - wc, 0), y2, x2))
    return boxes


def _input_tensor(img, box, pre) -> torch.Tensor:
    top, left, bottom, right = box
    crop = img.crop((left, top, right, bottom)).resize(
        (pre.size, pre.size), resample=pil_resample(pre.interpolation))
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class Segmenter:
    """Label maps from an aligned pair for a fixed set of class queries (see the module doc)."""

    def __init__(self, vision_encoder, image_to_space: Projection, queries: torch.Tensor,
                 query_class: torch.Tensor | None = None, *, window: int | None = None,
                 stride: int | None = None, short_side: int | None = None,
                 background_threshold: float | None = None, background_class: int = 0,
                 logit_scale: float = 1.0, batch_size: int = 16, last_attention: str = "qk",
                 skip_last_mlp: bool = False):
        pre = vision_encoder.spec.preprocessing
        if pre is None:
            raise ValidationError(f"{vision_encoder.spec.name} has no image preprocessing")
        self.encoder, self.project, self.pre = vision_encoder, image_to_space, pre
        self.queries = F.normalize(torch.as_tensor(queries).float(), dim=-1)
        self.query_class = (torch.arange(len(self.queries)) if query_class is None
                            else torch.as_tensor(query_class).long())
        if len(self.query_class) != len(self.queries):
            raise ValidationError(f"{len(self.query_class)} query classes for "
                                  f"{len(self.queries)} queries")
        self.num_classes = int(self.query_class.max()) + 1
        self.window = int(window or pre.size)
        self.stride = int(stride or max(1, self.window // 2))
        for key in ("window", "stride"):
            if getattr(self, key) < 1:
                raise ValidationError(f"{key} must be a positive number of pixels")
        self.short_side = short_side
        if background_threshold is not None and not 0.0 <= background_threshold <= 1.0:
            raise ValidationError(f"background_threshold is a probability in [0, 1], got "
                                  f"{background_threshold!r}")
        self.background_threshold = background_threshold
        self.background_class = background_class
        self.logit_scale = float(logit_scale)
        self.batch_size = batch_size
        check_last_block(last_attention, skip_last_mlp)
        self.last_block = {"last_attention": last_attention, "skip_last_mlp": skip_last_mlp}

    def query_scores(self, image) -> torch.Tensor:
        """``(Q, H, W)`` window-averaged cosine scores of each query at each pixel."""
        img = as_pil_rgb(image)
        size = (img.height, img.width)
        if self.short_side:
            scale = self.short_side / min(size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             resample=3)
        h, w = img.height, img.width
        boxes = _windows(h, w, self.window, self.stride)
        total = torch.zeros(len(self.queries), h, w)
        count = torch.zeros(1, h, w)
        for s in range(0, len(boxes), self.batch_size):
            chunk = boxes[s:s + self.batch_size]
            batch = torch.stack([_input_tensor(img, b, self.pre) for b in chunk])
            feats = dense_features(self.encoder, batch, **self.last_block)  # (k, gh, gw, dim)
            k, gh, gw, dim = feats.shape
            z = to_space(self.project, feats.reshape(-1, dim), "image")
            cos = (z @ self.queries.T).reshape(k, gh, gw, -1).permute(0, 3, 1, 2)
            t, l, b, r = chunk[0]
            up = F.interpolate(cos, size=(b - t, r - l), mode="bilinear", align_corners=False)
            for (t, l, b, r), u in zip(chunk, up):
                total[:, t:b, l:r] += u
                count[:, t:b, l:r] += 1
        scores = total / count
        if (h, w) != size:
            scores = F.interpolate(scores[None], size=size, mode="bilinear",
                                   align_corners=False)[0]
        return scores

    def class_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)``: softmax over the queries, then the best query of each class."""
        prob = (scores * self.logit_scale).softmax(dim=0)
        if len(self.queries) == self.num_classes and bool(
                (self.query_class == torch.arange(self.num_classes)).all()):
            return prob  # one word per class: nothing to merge
        out = torch.zeros(self.num_classes, *prob.shape[1:])
        for c in range(self.num_classes):
            members = self.query_class == c
            if members.any():
                out[c] = prob[members].max(dim=0).values
        return out

    def predict(self, image) -> np.ndarray:
        """``(H, W)`` int64 class indices for one image."""
        prob = self.class_probabilities(self.query_scores(image))
        best, pred = prob.max(dim=0)
        if self.background_threshold is not None:
            pred[best < self.background_threshold] = self.background_class
        return pred.numpy().astype(np.int64)


def segment(vision_encoder, text_encoder, image_to_space: Projection,
            text_to_space: Projection, images: Sequence, class_queries: Sequence, *,
            templates=None, progress: bool = True, **settings) -> list[np.ndarray]:
    """Label maps ``(H, W)`` for PIL images among ``class_queries`` (per class a word or a list
    of synonyms). ``settings``: `Segmenter`'s ``window``, ``stride``, ``short_side``,
    ``background_threshold``, ``background_class``, ``logit_scale``, ``batch_size``,
    ``last_attention``, ``skip_last_mlp``."""
    queries, owner = class_text_embeddings(text_encoder, text_to_space, class_queries, templates,
                                           progress=progress)
    segmenter = Segmenter(vision_encoder, image_to_space, queries, owner, **settings)
    return [segmenter.predict(im) for im in images]


def evaluate_segmentation(vision_encoder, text_encoder, image_to_space: Projection,
                          text_to_space: Projection, data, *, templates=None,
                          limit: int | None = None, progress: bool = True,
                          **settings) -> dict:
    """``{"miou", "pixel_acc", "iou_<class>"...}`` on a segmentation set (a spec such as
    ``seg:DIR`` / ``shapes-seg:test`` or a `SegmentationDataset`), the first ``limit``
    images when given; scored by `alignprobe.metrics.segmentation_scores`' definitions."""
    ds = data if isinstance(data, SegmentationDataset) else open_segmentation(data)
    if templates is None:
        templates = ds.templates  # the set's own, else None: CLIP's 80
    queries, owner = class_text_embeddings(text_encoder, text_to_space, ds.class_queries,
                                           templates, progress=progress)
    segmenter = Segmenter(vision_encoder, image_to_space, queries, owner, **settings)
    acc = SegmentationAccumulator(ds.num_classes, ds.ignore_index)
    n = len(ds) if limit is None else min(int(limit), len(ds))
    for i in tqdm(range(n), desc=f"segmenting {ds.name}", unit="image",
                  disable=None if progress else True):
        acc.update(segmenter.predict(ds.load_image(i)), ds.load_mask(i))
    scores = acc.scores()
    row = {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"]}
    row.update(iou_columns(scores["iou"], ds.class_names))
    return row
