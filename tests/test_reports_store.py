"""The results store: records -> one DataFrame, seed aggregation, export."""
import json

import numpy as np
import pandas as pd
import pytest

from alignprobe.errors import ValidationError
from alignprobe.reports.store import aggregate, export_results, filter_rows, load_results
from reports_data import FAILED, SEED_SHIFT, SEEDED, TEXT, VISION, metrics_for, write_results


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results")


def test_load_results_rows_columns_and_values(results):
    df = load_results(results)
    assert len(df) == len(VISION) * len(TEXT) - 1 + 1  # one failed dropped, one extra seed
    assert set(df["status"]) == {"ok"}
    assert not ((df["vision"] == FAILED[0]) & (df["text"] == FAILED[1])).any()
    for col in ("kind", "status", "vision", "text", "vision_family", "vision_params_m", "vision_is_control",
                "text_family", "text_params_m", "config_hash", "group_hash", "seed", "started", "finished",
                "total_seconds", "path", "kmeans_nmi", "knn_top1@10", "knn_top1@20", "linear_probe_top1",
                "zero_shot_top1", "i2t_r1", "probe_val_loss", "probe_epochs"):
        assert col in df.columns, col
    row = df[(df["vision"] == "mae-b") & (df["text"] == "minilm")].iloc[0]
    expected = metrics_for("mae-b", "minilm")
    for name, value in expected.items():
        assert row[name] == pytest.approx(value), name
    assert row["vision_family"] == "mae" and row["vision_params_m"] == pytest.approx(85.8)
    assert row["text_params_m"] == pytest.approx(22.7)
    assert bool(df.loc[df["vision"] == "random_vit", "vision_is_control"].all())
    assert row["total_seconds"] == pytest.approx(10.0)
    assert row["started"] == pd.Timestamp("2026-11-28T20:00:00Z")
    seeds = df[(df["vision"] == SEEDED[0]) & (df["text"] == SEEDED[1])]
    assert sorted(seeds["seed"]) == [0, 1]
    assert seeds["group_hash"].nunique() == 1 and seeds["config_hash"].nunique() == 2


def test_load_results_include_failed(results):
    df = load_results(results, include_failed=True)
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1
    assert (failed["vision"].iloc[0], failed["text"].iloc[0]) == FAILED
    assert "out of memory" in failed["error"].iloc[0]
    assert np.isnan(failed["kmeans_nmi"].iloc[0])


def test_aggregate_mean_std_and_n_seeds(results):
    agg = aggregate(load_results(results), ["kmeans_nmi", "zero_shot_top1"])
    assert len(agg) == len(VISION) * len(TEXT) - 1
    row = agg[(agg["vision"] == SEEDED[0]) & (agg["text"] == SEEDED[1])].iloc[0]
    base = metrics_for(*SEEDED)
    assert row["n_seeds"] == 2 and row["seeds"] == "0,1"
    for m in ("kmeans_nmi", "zero_shot_top1"):
        values = [base[m], base[m] + SEED_SHIFT]
        assert row[f"{m}_mean"] == pytest.approx(np.mean(values))
        assert row[f"{m}_std"] == pytest.approx(np.std(values, ddof=1))
    single = agg[(agg["vision"] == "dino-b") & (agg["text"] == "mpnet")].iloc[0]
    assert single["n_seeds"] == 1 and np.isnan(single["kmeans_nmi_std"])
    assert single["kmeans_nmi_mean"] == pytest.approx(VISION["dino-b"][3])
    assert "linear_probe_top1_mean" not in agg.columns
    with pytest.raises(ValidationError, match="not_a_metric"):
        aggregate(load_results(results), ["not_a_metric"])


def test_errors_for_missing_and_empty_dirs(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="no result records"):
        load_results(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "plan.json").write_text(json.dumps({"pairs": []}))
    with pytest.raises(ValidationError, match="1 other JSON"):
        load_results(tmp_path / "other")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_round_trip(results, tmp_path, suffix):
    df = load_results(results)
    path = export_results(df, tmp_path / f"out{suffix}")
    back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert list(back.columns) == list(df.columns)
    np.testing.assert_allclose(back["zero_shot_top1"], df["zero_shot_top1"])
    assert list(back["vision"]) == list(df["vision"])
    with pytest.raises(ValidationError, match="suffix"):
        export_results(df, tmp_path / "out.xlsx")


def test_filter_rows_by_names_and_query(results):
    df = load_results(results)
    assert set(filter_rows(df, ["mae-b", "dino-b"])["vision"]) == {"mae-b", "dino-b"}
    assert set(filter_rows(df, "mae-b,dino-b")["vision"]) == {"mae-b", "dino-b"}
    assert set(filter_rows(df, "vision_family == 'dinov2'")["vision"]) == {"dinov2-b", "dinov2-l"}
    assert (filter_rows(df, "`knn_top1@20` > 0.7")["knn_top1@20"] > 0.7).all()
    with pytest.raises(ValidationError, match="not in these results"):
        filter_rows(df, ["dinov3-b"])
    with pytest.raises(ValidationError, match="not a valid filter"):
        filter_rows(df, "vision ==")


def test_two_configs_of_one_pair_are_told_apart(results):
    from alignprobe.reports.records import write_record
    from alignprobe.reports.store import points
    from alignprobe.reports.tables import render_table
    from reports_data import record

    other = record("dino-b", "minilm")
    other.update(config_hash="otherconfig0", group_hash="otherconfig")
    other["metrics"]["kmeans_nmi"] = 0.9
    write_record(results / "probe__dino-b__minilm__otherconfig0.json", other)
    table = render_table(results, metrics="kmeans_nmi")
    assert "| config |" in table.splitlines()[0]
    assert sum(line.startswith("| dino-b | minilm |") for line in table.splitlines()) == 2
    with pytest.raises(ValidationError, match="several configurations"):
        points(load_results(results), ["kmeans_nmi"])
    only = load_results(results).query("group_hash != 'otherconfig'")
    assert len(points(only, ["kmeans_nmi"])) == len(VISION) * len(TEXT) - 1
