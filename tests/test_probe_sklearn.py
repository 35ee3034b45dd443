"""`AlignmentProbe` keeps scikit-learn's estimator protocol: named parameters, get/set_params, clone."""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from alignprobe.errors import ValidationError
from alignprobe.probe import AlignmentProbe, TrainConfig
from alignprobe.probe.training.probe import RECIPE


def _tiny_pairs(n=48, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 6)).astype(np.float32)
    image = np.concatenate([shared, rng.standard_normal((n, 10)).astype(np.float32)], axis=1)
    text = np.concatenate([shared, rng.standard_normal((n, 4)).astype(np.float32)], axis=1)
    return image, text


def test_every_trainconfig_field_is_a_named_parameter():
    sig = inspect.signature(AlignmentProbe.__init__)
    assert not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    params = set(AlignmentProbe().get_params())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert params == fields | {"config", "preset", "quiet", "out_dir", "resume"}


def test_clone_of_a_probe_with_one_hyperparameter():
    probe = AlignmentProbe(epochs=1)
    copy = clone(probe)
    assert copy is not probe and copy.get_params() == probe.get_params()
    assert copy.epochs == 1 and copy.lr == RECIPE and copy.training_options() == {"epochs": 1}


def test_get_set_params_round_trip():
    config = TrainConfig(out_dim=8, batch_size=16, epochs=2)
    probe = AlignmentProbe(config, quiet=True, lr=1e-3)
    params = probe.get_params()
    assert params["config"] is config and params["lr"] == 1e-3 and params["quiet"] is True
    other = AlignmentProbe().set_params(**params)
    assert other.get_params() == params
    assert probe.set_params(lr=5e-3, epochs=3) is probe
    assert probe.training_options() == {"lr": 5e-3, "epochs": 3}
    with pytest.raises(ValidationError, match="unknown AlignmentProbe parameter"):
        probe.set_params(colour="red")


@pytest.mark.parametrize("check", [
    check_no_attributes_set_in_init, check_parameters_default_constructible, check_get_params_invariance,
    check_set_params, check_do_not_raise_errors_in_init_or_set_params,
])
def test_scikit_learn_estimator_checks(check):
    check("AlignmentProbe", AlignmentProbe())


def test_invalid_values_are_refused_at_fit_not_at_construction():
    image, text = _tiny_pairs()
    probe = AlignmentProbe(lr=-1.0, preset="no-such-preset")  # stored as given
    assert probe.lr == -1.0
    with pytest.raises(ValidationError, match="unknown preset"):
        probe.fit(image, text)
    with pytest.raises(ValidationError, match="TrainConfig.lr"):
        probe.set_params(preset="sail-probe").fit(image, text)
    with pytest.raises(ValidationError, match="config must be a TrainConfig"):
        AlignmentProbe(config={"lr": 1}).fit(image, text)


def test_explicit_parameters_win_and_fit_leaves_parameters_alone():
    image, text = _tiny_pairs()
    config = TrainConfig(out_dim=8, batch_size=16, epochs=3, eval_every=0, checkpoint_every=None, prefetch=False,
                         device="cpu")
    probe = AlignmentProbe(config, quiet=True, epochs=1, lr=1e-3)
    before = probe.get_params()
    probe.fit(image, text)
    assert probe.get_params() == before  # fit writes only attributes ending in "_"
    assert probe.config_ == config.replace(epochs=1, lr=1e-3) and probe.recipe_changes_ == []
    assert len(probe.history_) == 1 and probe.n_features_image_ == 16 and probe.n_features_text_ == 10
    fitted_twin = clone(probe)
    assert not hasattr(fitted_twin, "model_") and fitted_twin.get_params() == before


def test_preset_path_records_the_explicit_fields_as_changes():
    image, text = _tiny_pairs()
    probe = AlignmentProbe(quiet=True, epochs=1, out_dim=8, batch_size=16, device="cpu", eval_every=0,
                           checkpoint_every=None).fit(image, text)
    assert probe.config_.epochs == 1 and probe.config_.out_dim == 8
    changed = {c["field"]: c["why"] for c in probe.recipe_changes_}
    assert changed["epochs"] == "set explicitly" and changed["out_dim"] == "set explicitly"
