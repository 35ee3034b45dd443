"""The public namespaces: one lazy way of export, every listed name resolves, internals stay inside."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

NAMESPACES = ("alignprobe", "alignprobe.backbones", "alignprobe.probe", "alignprobe.probe.pipelines",
              "alignprobe.metrics", "alignprobe.reports")


@pytest.mark.parametrize("name", NAMESPACES)
def test_every_exported_name_resolves_and_dir_lists_it(name):
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_sail_training_and_evaluation_at_the_top_level():
    import alignprobe
    from alignprobe.probe.pipelines.aligned import load_aligned
    from alignprobe.probe.pipelines.train import SailRunConfig, evaluate_checkpoint, train_pair
    from alignprobe.probe.training.probe import AlignmentProbe

    assert alignprobe.train_pair is train_pair and alignprobe.SailRunConfig is SailRunConfig
    assert alignprobe.evaluate is evaluate_checkpoint and alignprobe.load_aligned is load_aligned
    assert alignprobe.AlignmentProbe is AlignmentProbe
    assert {"train_pair", "SailRunConfig", "evaluate", "load_aligned", "AlignmentProbe", "__version__"} \
        <= set(alignprobe.__all__)


def test_dir_shows_the_subpackages_and_attribute_access_imports_them():
    import alignprobe

    assert {"backbones", "probe", "metrics", "reports"} <= set(dir(alignprobe))
    assert alignprobe.metrics.kmeans_nmi is importlib.import_module("alignprobe.metrics.clustering").kmeans_nmi


@pytest.mark.parametrize("name, internal", [
    ("alignprobe.probe", "PRESETS"), ("alignprobe.probe", "METRIC_GROUPS"), ("alignprobe.probe", "resolve_recipe"),
    ("alignprobe.probe", "Trainer"), ("alignprobe.reports", "write_record"), ("alignprobe.reports", "METRIC_INFO"),
    ("alignprobe", "resolve_recipe"), ("alignprobe", "Trainer"), ("alignprobe", "write_record"),
    ("alignprobe.metrics", "TOO_FEW_FOR_INTERVALS"),
])
def test_internals_are_not_exported(name, internal):
    module = importlib.import_module(name)
    assert internal not in module.__all__ and internal not in dir(module)


def test_metric_info_is_the_function_even_after_its_module_is_imported():
    import alignprobe.reports.metric_info  # noqa: F401  (sets the package attribute of that name)
    from alignprobe.reports import metric_info

    assert callable(metric_info) and metric_info("kmeans_nmi").higher_is_better is True


def test_importing_the_namespaces_loads_no_ml_library():
    code = ("import sys, alignprobe, alignprobe.backbones, alignprobe.probe, alignprobe.probe.pipelines, "
            "alignprobe.metrics, alignprobe.reports; "
            "print(sorted(m for m in ('torch', 'transformers', 'timm', 'pandas', 'matplotlib', 'faiss', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
