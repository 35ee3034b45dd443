"""Recall@k for retrieval, including image-text retrieval with several captions per image."""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._neighbors import unit_rows
from .registry import register_metric
from ._validation import (
    as_chunk_size,
    as_ks,
    as_labels,
    as_matrix,
    auto_chunk,
    same_cols,
)

# scores(start, stop) -> (stop - start, n_items) scores of queries start..stop-1.
ScoreBlocks = Callable[[int, int], Any]
Positives = Union[np.ndarray, torch.Tensor, Sequence[Any]]


def _positives_csr(positives: Positives, n_items: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Positives as CSR (indptr, indices) plus n_queries.

    Accepts a boolean (n_queries, n_items) matrix, a 1-D integer array (one
    positive per query), or a sequence of collections of item indices.
    """
    if isinstance(positives, torch.Tensor):
        positives = positives.detach().cpu().numpy()
    if isinstance(positives, np.ndarray) and positives.dtype == bool:
        if positives.ndim != 2:
            raise ValidationError(f"positives as a boolean mask must be 2-D (n_queries, n_items); got shape {positives.shape}")
        if n_items is not None and positives.shape[1] != n_items:
            raise ValidationError(
                f"positives mask must have one column per item ({n_items}); got {positives.shape[1]} columns"
            )
        rows, cols = np.nonzero(positives)
        indptr = np.zeros(positives.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=positives.shape[0]), out=indptr[1:])
        return indptr, cols.astype(np.int64), positives.shape[0]
    if isinstance(positives, np.ndarray) and positives.ndim == 1 and positives.dtype != object:
        single = as_labels(positives, "positives")
        return np.arange(len(single) + 1, dtype=np.int64), single, len(single)
    try:
        groups = [np.atleast_1d(np.asarray(sorted(p) if isinstance(p, (set, frozenset)) else p)) for p in positives]
    except TypeError:
        raise ValidationError(
            "positives must be a boolean (n_queries, n_items) mask, an integer array with one positive per "
            f"query, or a sequence of collections of item indices; got {type(positives).__name__}"
        ) from None
    for i, g in enumerate(groups):
        if g.size and not np.issubdtype(g.dtype, np.integer):
            raise ValidationError(f"positives[{i}] must hold integer item indices; got dtype {g.dtype}")
    indptr = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum([g.size for g in groups], out=indptr[1:])
    indices = np.concatenate([g.astype(np.int64).ravel() for g in groups]) if groups else np.zeros(0, np.int64)
    return indptr, indices, len(groups)


def _check_positives(indptr: np.ndarray, indices: np.ndarray, n_items: int) -> None:
    counts = np.diff(indptr)
    if np.any(counts == 0):
        first = int(np.argmax(counts == 0))
        raise ValidationError(
            f"every query needs at least one positive item; query {first} (and {int((counts == 0).sum()) - 1} "
            "others) has none. Drop such queries: they would count as misses and bias recall down."
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        bad = indices[(indices < 0) | (indices >= n_items)][0]
        raise ValidationError(f"positive item indices must be in [0, {n_items}); got {int(bad)}")


def _ranks(scores: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of each query's best positive among all items.

    Ties count against the positive: a negative scoring equal to the best
    positive is ranked ahead of it, so a constant scorer gets no free hits.
    """
    best = scores.masked_fill(~pos_mask, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best) & ~pos_mask).sum(dim=1)


def _recall_blocks(
    score_block: ScoreBlocks,
    n_queries: int,
    n_items: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    ks: tuple[int, ...],
    chunk: int,
) -> dict[int, float]:
    hits = dict.fromkeys(ks, 0)
    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        s = score_block(start, stop)
        s = torch.as_tensor(s) if not isinstance(s, torch.Tensor) else s.detach()
        if s.shape != (stop - start, n_items):
            raise ValidationError(
                f"scores for queries {start}:{stop} must have shape {(stop - start, n_items)}; got {tuple(s.shape)}"
            )
        if s.is_complex() or s.dtype == torch.bool or not s.is_floating_point():
            s = s.double()
        if not bool(torch.isfinite(s).all()):
            raise ValidationError(f"scores must be finite; queries {start}:{stop} contain NaN or Inf")
        lo, hi = indptr[start], indptr[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
        mask = torch.zeros(stop - start, n_items, dtype=torch.bool, device=s.device)
        mask[torch.from_numpy(rows).to(s.device), torch.from_numpy(indices[lo:hi]).to(s.device)] = True
        rank = _ranks(s, mask)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / n_queries for k in ks}


def recall_at_k(
    scores: Any,
    positives: Positives,
    ks: int | Sequence[int] = (1, 5, 10),
    *,
    n_items: int | None = None,
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Recall@k: the fraction of queries with at least one positive item among their top-k.

    Definition (as in CLIP_benchmark / open_clip retrieval evaluation): a query
    is a hit at k if any of its positive items is ranked within the k
    highest-scoring items. Ties are broken against the positive (a negative
    scoring equal to the best positive ranks ahead of it).

    Args:
        scores: (n_queries, n_items) array of query-item scores (higher is
            better), or a callable ``scores(start, stop)`` returning the
            (stop - start, n_items) block for queries start..stop-1, so that
            large problems are scored block by block (then pass ``n_items``).
        positives: per query, its positive item indices: a sequence of
            sets/lists/arrays, a 1-D integer array (one positive per query), or
            a boolean (n_queries, n_items) mask. Every query needs >= 1 positive.
        ks: one k or several, each 1 <= k <= n_items.
        n_items: number of items; required when ``scores`` is a callable.
        chunk_size: queries per block.

    Returns {k: recall in [0, 1]}.
    """
    chunk_size = as_chunk_size(chunk_size)
    if callable(scores):
        if n_items is None:
            raise ValidationError("n_items is required when scores is a callable (it cannot be inferred)")
        if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
            raise ValidationError(f"n_items must be a positive integer; got {n_items!r}")
        indptr, indices, n_queries = _positives_csr(positives, n_items)
        block = scores
    else:
        s = as_matrix(scores, "scores", dtype=torch.float64 if _is_float64(scores) else torch.float32)
        if n_items is not None and n_items != s.shape[1]:
            raise ValidationError(f"n_items ({n_items}) disagrees with scores' {s.shape[1]} columns")
        n_items = s.shape[1]
        indptr, indices, n_queries = _positives_csr(positives, n_items)
        if n_queries != s.shape[0]:
            raise ValidationError(
                f"positives must have one entry per query row of scores ({s.shape[0]}); got {n_queries}"
            )

        def block(start: int, stop: int) -> torch.Tensor:
            return s[start:stop]

    if n_queries == 0:
        raise ValidationError("positives must not be empty (no queries)")
    _check_positives(indptr, indices, int(n_items))
    ks_t = as_ks(ks, "ks", high=int(n_items), high_reason=f"there are only {n_items} items")
    chunk = auto_chunk(n_queries, int(n_items), chunk_size)
    return _recall_blocks(block, n_queries, int(n_items), indptr, indices, ks_t, chunk)


def _is_float64(x: Any) -> bool:
    return getattr(x, "dtype", None) in (np.float64, torch.float64)


@register_metric("i2t_r{k}", label="I2T R@{k}", higher_is_better=True, group="alignment",
                 description="image-to-text retrieval recall@{k}")
@register_metric("t2i_r{k}", label="T2I R@{k}", higher_is_better=True, group="alignment",
                 description="text-to-image retrieval recall@{k}")
def retrieval_metrics(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Any,
    ks: int | Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int | None = None,
) -> dict[str, dict[int, float]]:
    """Image-to-text and text-to-image Recall@k on cosine similarity, several captions per image allowed.

    I2T: each image queries all captions; a hit if any of its own captions is
    in the top k. T2I: each caption queries all images; a hit if its image is
    in the top k. This is the COCO / Flickr30k protocol (5 captions per image)
    used by CLIP, SigLIP and SAIL (Zhang et al., CVPR 2025).

    Args:
        image_emb: (n_images, d) image embeddings (normalised here).
        text_emb: (n_texts, d) caption embeddings in the same space.
        text_to_image: (n_texts,) integer array; caption t describes image
            text_to_image[t]. Every image needs at least one caption.
        ks: one k or several.
        chunk_size: queries per block; the n_images x n_texts matrix is never
            formed (100k x 100k runs in ~128 MiB blocks).

    Returns {"i2t": {k: recall}, "t2i": {k: recall}}.
    """
    img = as_matrix(image_emb, "image_emb")
    txt = as_matrix(text_emb, "text_emb")
    same_cols(img, txt, "image_emb", "text_emb")
    if img.device != txt.device:
        raise ValidationError(f"image_emb and text_emb must be on the same device; got {img.device} and {txt.device}")
    t2i = as_labels(text_to_image, "text_to_image", txt.shape[0])
    n_img, n_txt = img.shape[0], txt.shape[0]
    if t2i.min() < 0 or t2i.max() >= n_img:
        bad = t2i[(t2i < 0) | (t2i >= n_img)][0]
        raise ValidationError(f"text_to_image entries must be image rows in [0, {n_img}); got {int(bad)}")
    counts = np.bincount(t2i, minlength=n_img)
    if np.any(counts == 0):
        raise ValidationError(
            f"every image needs at least one caption for image-to-text recall; {int((counts == 0).sum())} "
            f"images have none (first: image {int(np.argmax(counts == 0))}). Drop them from image_emb."
        )
    img_u, txt_u = unit_rows(img, "image_emb"), unit_rows(txt, "text_emb")
    # Captions grouped by image: the CSR form of each image's positives.
    order = np.argsort(t2i, kind="stable")
    i2t_positives = np.split(order, np.cumsum(counts)[:-1])

    out: dict[str, dict[int, float]] = {}
    out["i2t"] = recall_at_k(
        lambda s, e: img_u[s:e] @ txt_u.T, i2t_positives, ks, n_items=n_txt, chunk_size=chunk_size
    )
    out["t2i"] = recall_at_k(lambda s, e: txt_u[s:e] @ img_u.T, t2i, ks, n_items=n_img, chunk_size=chunk_size)
    return out


#: Captions per image in COCO / Flickr30k retrieval (SAIL evaluation/coco_zs_retrieval.py
#: `captions_per_image = 5`, "12/5000 have 6, and 1/5000 has 7 - I ignore these few extra captions").
MAX_CAPTIONS_PER_IMAGE = 5


def cap_captions_per_image(text_to_image: Any, max_per_image: int | None = MAX_CAPTIONS_PER_IMAGE) -> np.ndarray:
    """Indices of the captions kept when each image keeps at most `max_per_image` of its captions.

    Keeps each image's first captions in caption order (the reference takes
    ``captions[:5]`` per image), so COCO val2017's few images with 6 or 7
    captions count like the others and R@k is comparable with published
    numbers. ``None`` keeps every caption.

    Args:
        text_to_image: (n_texts,) image row of each caption.
        max_per_image: >= 1, or None.

    Returns a sorted int64 array of caption indices; apply it to both the
    caption embeddings and ``text_to_image`` before ``retrieval_metrics``.
    """
    t2i = as_labels(text_to_image, "text_to_image")
    if t2i.min() < 0:
        raise ValidationError(f"text_to_image entries must be image rows >= 0; got {int(t2i.min())}")
    if max_per_image is None:
        return np.arange(len(t2i), dtype=np.int64)
    if isinstance(max_per_image, bool) or not isinstance(max_per_image, (int, np.integer)) or max_per_image < 1:
        raise ValidationError(f"max_per_image must be a positive integer or None; got {max_per_image!r}")
    order = np.argsort(t2i, kind="stable")  # captions grouped by image, caption order kept within a group
    sorted_images = t2i[order]
    group_start = np.searchsorted(sorted_images, sorted_images, side="left")
    rank_in_image = np.arange(len(t2i)) - group_start
    return np.sort(order[rank_in_image < max_per_image])
