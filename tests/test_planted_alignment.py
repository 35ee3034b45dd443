"""Planted structure: paired features share a latent; alignment scores must fall as noise rises.

The latent of each built-in `shapes` sample is its shape class (one-hot) plus a
seeded Gaussian part; the "vision" and "text" features are two different random
linear maps of it plus independent noise. The probe and metrics used are the
ones `alignprobe run` calls.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignprobe import metrics as M
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.training.config import resolve_recipe
from alignprobe.probe.training.probe import AlignmentProbe

# Spaced so that no two levels saturate R@5 alike (the probe's AdamW reaches R@5 1.0 up to noise ~0.6)
NOISE = (0.05, 1.2, 2.5, 4.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_pairs(noise: float, seed: int = 0):
    ds = open_dataset("shapes:train?n=500")
    labels = np.asarray(ds.labels)
    rng = np.random.default_rng(seed)
    latent = np.concatenate([3.0 * np.eye(labels.max() + 1)[labels], rng.standard_normal((len(labels), 10))], 1)
    maps = np.random.default_rng(1234)  # the same maps at every noise level
    to_vision = maps.standard_normal((latent.shape[1], 64))
    to_text = maps.standard_normal((latent.shape[1], 48))
    noise_rng = np.random.default_rng(seed + 1)
    vision = latent @ to_vision + noise * noise_rng.standard_normal((len(labels), 64)) * 4.0
    text = latent @ to_text + noise * noise_rng.standard_normal((len(labels), 48)) * 4.0
    return vision.astype(np.float32), text.astype(np.float32)


def alignment_scores(noise: float) -> dict:
    vision, text = planted_pairs(noise)
    config, _ = resolve_recipe("sail-probe", len(vision), dict(out_dim=64, epochs=60, patience=None, seed=0,
                                                               device="cpu"))
    probe = AlignmentProbe(config, quiet=True).fit(vision, text)
    held = probe.val_index_
    img = probe.transform_image(vision[held])
    txt = probe.transform_text(text[held])
    retrieval = M.retrieval_metrics(img, txt, np.arange(len(held)), ks=(1, 5))
    return {
        "i2t_r5": retrieval["i2t"][5],
        "t2i_r5": retrieval["t2i"][5],
        "mutual_knn": M.mutual_knn(vision, text, 10),
        "cka": M.cka(vision, text),
    }


def test_alignment_scores_fall_monotonically_with_noise():
    scores = [alignment_scores(noise) for noise in NOISE]
    for metric in scores[0]:
        series = [s[metric] for s in scores]
        assert all(a > b for a, b in zip(series, series[1:])), (metric, series)
    # At the lowest noise the planted pairs are clearly aligned; at the highest, far less so.
    assert scores[0]["i2t_r5"] > 0.5 and scores[-1]["i2t_r5"] < scores[0]["i2t_r5"] / 2
