"""The metric registry: each column's direction declared once, derived columns, unknown names refused."""
from __future__ import annotations

import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics import list_measures, get_measure
from alignprobe.metrics.registry import (
    UnknownMetricError,
    list_metrics,
    metric_columns,
    metric_info,
    register_metric,
)
from alignprobe.reports.metric_info import resolve_metrics, sort_metrics

DIRECTIONS = {
    "kmeans_nmi": True, "kmeans_ari": True, "knn_top1@20": True, "knn_top1@200": True,
    "linear_probe_top1": True, "linear_probe_top5": True, "zero_shot_top1": True, "zero_shot_top5": True,
    "i2t_r1": True, "i2t_r10": True, "t2i_r5": True, "winoground_text": True, "winoground_image": True,
    "winoground_group": True, "mmvp": True, "mmvp_orientation": True, "miou": True, "pixel_acc": True,
    "iou_sky": True, "probe_val_loss": False, "sail_val_loss": False, "probe_epochs": None, "sail_epochs": None,
    "sail_best_epoch": None, "n_pairs": None,
}


@pytest.mark.parametrize("name, higher", sorted(DIRECTIONS.items()))
def test_each_metric_has_its_declared_direction(name, higher):
    info = metric_info(name)
    assert info.name == name and info.higher_is_better is higher and info.label


def test_declared_next_to_the_function_that_computes_it():
    assert metric_info("kmeans_nmi").source == "alignprobe.metrics.clustering.kmeans_nmi"
    assert metric_info("knn_top1@10").source == "alignprobe.metrics.knn.knn_accuracy"
    assert metric_info("i2t_r5").label == "I2T R@5" and metric_info("knn_top1@10").label == "k-NN top-1 @10"


@pytest.mark.parametrize("measure", list_measures())
def test_measures_and_their_calibration_columns_come_from_the_measure_registry(measure):
    m = get_measure(measure)
    assert metric_info(measure).higher_is_better is m.higher_is_better
    assert metric_info(measure).reference == m.reference
    assert metric_info(f"{measure}_calibrated").higher_is_better is True
    assert metric_info(f"{measure}_p").higher_is_better is False
    assert metric_info(f"{measure}_threshold").higher_is_better is None
    assert metric_info(f"{measure}_null").higher_is_better is None
    assert {metric_info(f"{measure}{s}").group for s in ("", "_calibrated", "_p", "_null")} == {"alignment"}


@pytest.mark.parametrize("name, base", [
    ("baseline_procrustes_i2t_r1", "i2t_r1"), ("baseline_asif_zero_shot_top1", "zero_shot_top1"),
    ("baseline_cca_t2i_r10", "t2i_r10"), ("baseline_ridge_sail_val_loss", "sail_val_loss"),
])
def test_baseline_columns_take_the_direction_of_their_metric(name, base):
    info = metric_info(name)
    assert info.higher_is_better is metric_info(base).higher_is_better and info.group == metric_info(base).group
    assert metric_info(base).label in info.label


@pytest.mark.parametrize("name", ["zero_shot_tpo1", "knn_top1@", "cka_calibrate", "baseline_nosuch_i2t_r1",
                                  "baseline_ridge_nosuch", "kmeans", ""])
def test_unknown_names_are_refused_with_suggestions(name):
    with pytest.raises(UnknownMetricError, match="unknown metric") as err:
        metric_info(name)
    assert isinstance(err.value, ValidationError) and "@register_metric" in str(err.value)


def test_suggestion_names_the_close_metric():
    with pytest.raises(UnknownMetricError, match="Did you mean kmeans_nmi"):
        metric_info("kmeans_nmj")


def test_display_order_follows_groups_then_declarations():
    names = ["probe_epochs", "cka_null", "t2i_r1", "knn_top1@200", "i2t_r10", "kmeans_ari", "i2t_r1", "cka",
             "knn_top1@20", "kmeans_nmi", "baseline_asif_i2t_r1", "linear_probe_top1", "miou", "not_declared"]
    assert sort_metrics(names) == ["kmeans_nmi", "kmeans_ari", "knn_top1@20", "knn_top1@200", "linear_probe_top1",
                                   "i2t_r1", "i2t_r10", "t2i_r1", "cka", "cka_null", "miou",
                                   "baseline_asif_i2t_r1", "probe_epochs", "not_declared"]


def test_list_metrics_by_group_and_the_columns_of_functions():
    from alignprobe.metrics import mmvp_scores, segmentation_scores, winoground_scores

    assert list_metrics("clustering") == ["kmeans_nmi", "kmeans_ari", "knn_top1@{k}"]
    assert set(list_measures()) <= set(list_metrics("alignment"))
    assert metric_columns(winoground_scores, mmvp_scores, segmentation_scores) == (
        "winoground_text", "winoground_image", "winoground_group", "mmvp", "miou", "pixel_acc")
    with pytest.raises(ValidationError, match="unknown metric group"):
        list_metrics("speed")


def test_a_second_declaration_of_a_name_is_refused():
    with pytest.raises(ValueError, match="already declared"):
        register_metric("kmeans_nmi", label="x", higher_is_better=True, group="clustering", description="x")(len)
    with pytest.raises(ValueError, match="group must be one of"):
        register_metric("new_metric", label="x", higher_is_better=True, group="speed", description="x")(len)


def test_reports_leave_out_undeclared_columns_and_refuse_them_by_name(caplog):
    available = ["kmeans_nmi", "cka_calibrated", "mystery_column"]
    assert resolve_metrics("all", available) == ["kmeans_nmi", "cka_calibrated"]
    assert "mystery_column" in caplog.text
    with pytest.raises(UnknownMetricError, match="mystery_column"):
        resolve_metrics("mystery_column", available)
