"""`run` records permutation-calibrated similarity: the values of `metrics.calibrate` on the same sample."""
from __future__ import annotations

import numpy as np
import pytest

from alignprobe import metrics as M
from alignprobe.config import EncodeOptions
from alignprobe.errors import ValidationError
from alignprobe.probe.pipelines.run import DEFAULT_PERMUTATIONS, RunConfig, RunPipeline, run_pair
from alignprobe.probe.pipelines.sweep import SweepConfig

OPTIONS = EncodeOptions(quiet=True, device="cpu")
PAIRS = "shapes:train?n=200"


def _config(**kw):
    settings = dict(vision="pixels-8", text="bow", pairs=PAIRS, metrics=("similarity",), similarity_samples=96,
                    n_permutations=40)
    return RunConfig(**{**settings, **kw})


def test_record_holds_calibrate_on_the_same_sample_and_seed(tmp_path, one_torch_thread):
    config = _config(similarity=("mutual_knn", "cka", "rsa"), seed=3)
    record, _, _ = run_pair(config, out_dir=tmp_path, options=OPTIONS)
    metrics, details = record["metrics"], record["details"]
    suffixes = ("", "_calibrated", "_p", "_threshold", "_null")
    assert set(metrics) == {f"{m}{s}" for m in ("mutual_knn", "cka", "rsa") for s in suffixes}
    assert details["similarity_null_permutations"] == 40 and details["similarity_measures"] == ["mutual_knn", "cka",
                                                                                                "rsa"]
    # the same rows, read back from the same cache, calibrated directly
    pipeline = RunPipeline(config, OPTIONS)
    pairs = pipeline.workspace.encode("pairs", PAIRS, captions=True)
    rows, held_out = pipeline.similarity_rows(pairs, None)
    assert len(rows) == details["similarity_n"] == 96 and not held_out
    a, b = pairs.images.rows(rows), pairs.captions.rows(pairs.first_caption()[rows])
    for name, params in (("mutual_knn", {"k": 10}), ("cka", {}), ("rsa", {})):
        direct = M.calibrate(a, b, name, n_permutations=40, alpha=0.05, seed=3, **params)
        assert metrics[name] == pytest.approx(direct.observed, abs=1e-12)
        assert metrics[f"{name}_calibrated"] == pytest.approx(direct.calibrated, abs=1e-12)
        assert metrics[f"{name}_p"] == pytest.approx(direct.p_value, abs=1e-12)
        assert metrics[f"{name}_threshold"] == pytest.approx(direct.threshold, abs=1e-12)
        assert metrics[f"{name}_null"] == pytest.approx(np.mean(direct.null), abs=1e-12)  # mean of the same draws
    assert metrics["cka_p"] < 0.05  # shapes' captions describe the images


def test_similarity_subset_defaults_and_bad_names():
    config = RunConfig(vision="pixels-8", text="bow")
    assert config.similarity == M.DEFAULT_SIMILARITY_MEASURES and config.n_permutations == DEFAULT_PERMUTATIONS == 200
    with pytest.raises(ValidationError) as err:
        _config(similarity=("mutual_knn", "ckaa"))
    assert "ckaa" in str(err.value) and all(name in str(err.value) for name in M.list_measures())
    with pytest.raises(ValidationError, match="at least one"):
        _config(similarity=())
    with pytest.raises(ValidationError, match="n_permutations"):
        _config(n_permutations=0)
    assert _config(similarity="cka").similarity == ("cka",)
    # a different subset is a different record (and reuse key)
    assert _config(similarity=("cka",)).config_hash() != _config().config_hash()
    sweep = SweepConfig(vision=["pixels-8"], text=["bow"], run={"similarity": "cka, rv_coefficient"})
    assert sweep.pairs()[0].similarity == ("cka", "rv_coefficient")
