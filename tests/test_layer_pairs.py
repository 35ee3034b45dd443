"""The best layer pair, found honestly (`alignprobe layers`, issue 19 item 4).

On planted arrays: a maximum over 12 x 12 independent layer pairs is far above one pair's chance
level raw, yet not significant once calibrated for the search; a planted pair is found and is
significant. On tiny encoders built from configs: the search scores exactly the held-out pairs
`run` scores, and the command writes its record, table and heat map offline.
"""
import json

import numpy as np
import pandas as pd
import pytest

from alignprobe.cli_layers import layers
from alignprobe.probe.pipelines.layer_pairs import (LayerPairsConfig, LayerPairsResult, held_out_rows,
                                                    score_layer_pairs, write_layer_pairs)
from alignprobe.probe.pipelines.run import RunConfig, run_pair
from alignprobe.reports.layer_heatmap import plot_layer_heatmap
from alignprobe.config import EncodeOptions
from alignprobe.backbones.request import EncoderRequest
from alignprobe.errors import ValidationError

from helpers import invoke, save_hf_text, save_hf_vision, write_images

N, D, K = 96, 16, 99


def _independent_layers(seed, n_layers=12):
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal((N, D)) for _ in range(n_layers)],
            [rng.standard_normal((N, D)) for _ in range(n_layers)])


def test_max_over_12_by_12_independent_pairs_is_inflated_raw_but_not_significant_calibrated():
    xs, ys = _independent_layers(seed=1)
    c, k = score_layer_pairs(xs, ys, "mutual_knn", n_permutations=49, seed=0, k=10)
    assert c.scores.shape == (12, 12) and k == 10
    single_chance = float(np.mean(c.pair_null_means))  # one pair's chance level, about k / (n - 1)
    assert single_chance == pytest.approx(10 / (N - 1), rel=0.05)
    # the raw maximum sits far above one pair's chance level and above one pair's 5% threshold...
    assert c.observed > 1.2 * single_chance and c.observed > float(np.mean(c.pair_thresholds))
    assert c.pair_p_values[c.argmax] <= 0.05
    assert (c.pair_p_values <= 0.05).sum() >= 2  # ...and several single pairs look "significant" by chance
    # ...but the maximum, calibrated for the search over 144 pairs, is not
    assert not c.significant and c.p_value > 0.05 and c.calibrated == 0.0


def test_the_calibrated_maximum_rejects_at_its_level_over_repeated_independent_draws():
    rejected = 0
    for seed in range(20):
        xs, ys = _independent_layers(seed=100 + seed, n_layers=4)
        rejected += score_layer_pairs(xs, ys, "mutual_knn", n_permutations=39, seed=seed, k=5)[0].significant
    # level 0.05: 1 expected in 20; 4 or more has probability < 2% under a correct calibration
    assert rejected <= 3


def test_a_planted_pair_is_found_and_significant():
    rng = np.random.default_rng(0)
    xs, ys = _independent_layers(seed=2, n_layers=6)
    z = rng.standard_normal((N, 4))
    xs[4] = z @ rng.standard_normal((4, D)) + 0.3 * rng.standard_normal((N, D))
    ys[1] = z @ rng.standard_normal((4, 24)) + 0.3 * rng.standard_normal((N, 24))
    c, _ = score_layer_pairs(xs, ys, "mutual_knn", n_permutations=K, seed=0, k=10)
    assert c.argmax == (4, 1)
    assert c.significant and c.p_value == pytest.approx(1 / (K + 1)) and c.calibrated > 0.2
    others = np.delete(c.pair_calibrated.ravel(), 4 * 6 + 1)
    assert others.max() < c.pair_calibrated[4, 1]


def test_result_record_table_and_heat_map(tmp_path):
    rng = np.random.default_rng(3)
    xs, ys = _independent_layers(seed=3, n_layers=3)
    z = rng.standard_normal((N, 4))
    xs[2], ys[0] = z @ rng.standard_normal((4, D)), z @ rng.standard_normal((4, D))
    c, k = score_layer_pairs(xs, ys, "cka", n_permutations=19, seed=0)
    assert k is None  # CKA takes no k
    config = LayerPairsConfig(vision="pixels-8", text="bow", measure="cka", vision_layers=(2, 5, 7),
                              text_layers=(1, 3, 4), n_permutations=19)
    result = LayerPairsResult(config, config.request("vision"), config.request("text"), [2, 5, 7], [1, 3, 4],
                              N, k, c)
    assert result.selected == (7, 1)
    paths = write_layer_pairs(result, tmp_path)
    record = json.loads(paths["record"].read_text())
    assert paths["record"].name.startswith("layers__")
    assert record["selected"] == {"vision_layer": 7, "text_layer": 1, "observed": pytest.approx(c.observed)}
    assert record["max"]["p"] == pytest.approx(c.p_value) and record["n_permutations"] == 19
    assert EncoderRequest.from_dict(record["vision_request"]) == config.request("vision")
    assert len(record["pairs"]) == 9 and record["pairs"][0]["selected"]
    table = pd.read_csv(paths["csv"])
    assert list(table.columns[:4]) == ["vision_layer", "text_layer", "observed", "calibrated"]
    row = table[(table.vision_layer == 5) & (table.text_layer == 4)].iloc[0]
    assert row.observed == pytest.approx(c.scores[1, 2]) and row.p == pytest.approx(c.pair_p_values[1, 2])
    assert paths["md"].read_text().startswith("| vision_layer | text_layer |")
    figures = plot_layer_heatmap(paths["record"], tmp_path / "heat", formats=["png", "pdf"])
    assert [f.name for f in figures] == ["heat.png", "heat.pdf"]
    assert figures[0].read_bytes()[:4] == b"\x89PNG" and figures[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValidationError, match="not a layer-search record"):
        plot_layer_heatmap({"vision": "a"}, tmp_path / "bad")


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValidationError, match="--text-layers"):
        LayerPairsConfig(vision="pixels-8", text="bow", text_layers="1,x")
    with pytest.raises(ValidationError, match="mutual_knn"):
        LayerPairsConfig(vision="pixels-8", text="bow", measure="no-such-measure")
    with pytest.raises(ValidationError, match="alpha"):
        LayerPairsConfig(vision="pixels-8", text="bow", alpha=1.5)


def test_held_out_rows_are_the_probes_held_out_sample():
    valid = np.ones(200, bool)
    valid[[3, 50]] = False
    caption_image = np.repeat(np.arange(200), 2)
    rows, what = held_out_rows(valid, caption_image, seed=0, similarity_samples=1024)
    assert what == "held-out pairs" and len(rows) == 20  # the small-data recipe holds out 10 %
    assert not np.isin([3, 50], rows).any()
    small, _ = held_out_rows(valid, caption_image, seed=0, similarity_samples=8)
    assert len(small) == 8 and np.isin(small, rows).all()


# ------------------------------------------------------------------------------ tiny encoders
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return save_hf_vision(root / "vit", num_hidden_layers=3), save_hf_text(root / "bert", num_hidden_layers=2)


def test_cli_searches_tiny_encoders_offline_and_scores_what_run_scores(tiny_pair, tmp_path):
    vision, text = tiny_pair
    cache = tmp_path / "cache"
    out = tmp_path / "layers"
    result = invoke("--vision", vision, "--text", text, "--pairs", "shapes:train?n=120",
                    "--n-permutations", 19, "--results-dir", out, "--cache-dir", cache, "--formats", "png", "-q",
                    command=layers)
    assert result.exit_code == 0, result.output
    assert "selected pair: vision layer" in result.output
    (record_path,) = out.glob("layers__*.json")
    record = json.loads(record_path.read_text())
    assert record["vision_layers"] == [1, 2, 3] and record["text_layers"] == [1, 2]
    assert record["measure"] == "mutual_knn" and record["n_permutations"] == 19 and record["n"] == 10
    assert record["text_request"]["name"] == str(text) and len(record["pairs"]) == 6
    for suffix in (".csv", ".md", ".png"):
        assert record_path.with_suffix(suffix).is_file()
    # `run` with the same encoders at block 3 / the last text block scores the same held-out pairs
    config = RunConfig(vision=str(vision), text=str(text), vision_layer=3, pairs="shapes:train?n=120",
                       retrieval="shapes:test?n=20", metrics=("retrieval", "similarity"), train={"epochs": 2},
                       allow_overlap=True)  # tiny shapes repeat scenes by content
    run_record, _, _ = run_pair(config, out_dir=tmp_path / "runs", options=EncodeOptions(cache_dir=cache, quiet=True))
    assert run_record["details"]["similarity_n"] == record["n"]
    pair = next(p for p in record["pairs"] if (p["vision_layer"], p["text_layer"]) == (3, 2))
    assert pair["observed"] == pytest.approx(run_record["metrics"]["mutual_knn"], abs=1e-9)


def test_cli_refuses_bad_layers_with_the_flag_named(tiny_pair, tmp_path):
    vision, text = tiny_pair
    result = invoke("--vision", vision, "--text", text, "--text-layers", "1,-2", "--results-dir", tmp_path,
                    catch_exceptions=True, command=layers)
    assert result.exit_code == 2 and "--text-layers" in result.output


def test_an_unreadable_sample_image_is_left_out_and_named(tiny_pair, tmp_path):
    from alignprobe.probe.pipelines.layer_pairs import find_layer_pair

    vision, text = tiny_pair
    paths = write_images(tmp_path / "img", 60)
    captions = ["a photo of a cat", "two dogs playing", "red car", "a man in the snow", "a blue sky"]
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"img/{p.name},{captions[i % 5]}\n" for i, p in enumerate(paths)))
    rows, _ = held_out_rows(np.ones(60, bool), np.arange(60), seed=0, similarity_samples=1024)
    assert len(rows) == 6
    paths[rows[2]].write_bytes(b"not an image")
    config = LayerPairsConfig(vision=str(vision), text=str(text), pairs=f"csv:{csv}", vision_layers=(1, 3),
                              text_layers=(2,), n_permutations=9)
    result = find_layer_pair(config, EncodeOptions(cache_dir=tmp_path / "cache", quiet=True, num_workers=0))
    assert result.n == 5 and result.calibration.scores.shape == (2, 1)
    (unreadable,) = result.details["unreadable"]
    assert paths[rows[2]].stem in unreadable


def test_run_select_layers_probes_the_selected_pair_and_records_what_chose_it(tiny_pair, tmp_path):
    vision, text = tiny_pair
    cache, out = tmp_path / "cache", tmp_path / "layers"
    result = invoke("--vision", vision, "--text", text, "--pairs", "shapes:train?n=120", "--n-permutations", 9,
                    "--results-dir", out, "--cache-dir", cache, "--formats", "png", "-q", command=layers)
    assert result.exit_code == 0, result.output
    (record_path,) = out.glob("layers__*.json")
    searched = json.loads(record_path.read_text())
    common = ["run", "--vision", vision, "--text", text, "--pairs", "shapes:train?n=120", "--retrieval",
              "shapes:test?n=20", "--metrics", "retrieval", "--epochs", 1, "--allow-overlap", "--baselines", "none",
              "--cache-dir", cache, "-q", "--results-dir", tmp_path / "runs"]
    result = invoke(*common, "--select-layers", record_path)
    assert result.exit_code == 0, result.output
    (run_path,) = (tmp_path / "runs").glob("probe__*.json")
    config = json.loads(run_path.read_text())["config"]
    assert (config["vision_layer"], config["text_layer"]) == (searched["selected"]["vision_layer"],
                                                             searched["selected"]["text_layer"])
    chosen = config["layer_selection"]
    assert chosen["record"] == str(record_path.resolve()) and chosen["measure"] == "mutual_knn"
    assert chosen["p"] == searched["max"]["p"] and chosen["n_permutations"] == 9
    # a record of other encoders, or explicit layers beside it, are refused
    other = invoke("run", "--vision", "pixels-8", "--text", text, "--select-layers", record_path,
                   "--results-dir", tmp_path / "r2", catch_exceptions=True)
    assert other.exit_code == 2 and "searched the vision encoder" in other.output
    both = invoke(*common, "--select-layers", record_path, "--vision-layer", 1, catch_exceptions=True)
    assert both.exit_code == 2 and "drop --vision-layer" in both.output
