"""The small-data adaptation of the probe recipe (`training.config.small_data_changes`): its values,
how each is listed and recorded, and the bf16 autocast it adds on a device that multiplies bf16 natively."""
import numpy as np
import pytest
import torch

from alignprobe.probe.training import config as training_config
from alignprobe.probe.training.config import TrainConfig, resolve_recipe, small_data_changes
from alignprobe.probe.training.precision import native_bf16
from alignprobe.probe.training.probe import AlignmentProbe
from helpers import planted

BASE_FIELDS = {"batch_size", "lr", "patience", "min_rel_delta", "val_fraction", "drop_last", "norm_bias_init",
               "optimizer", "epochs"}


@pytest.fixture
def bf16_hardware(monkeypatch):
    """Pretend the device does (True) or does not (False) multiply bf16 natively."""
    def set_to(value: bool):
        monkeypatch.setattr(training_config, "native_bf16", lambda device: value)
    return set_to


def test_small_data_adaptation_is_listed_and_explicit_values_win(bf16_hardware):
    bf16_hardware(False)
    config, changes = resolve_recipe("sail-probe", 2400, {"epochs": 7, "device": "cpu"})
    assert (config.optimizer, config.batch_size, config.lr, config.epochs, config.patience, config.min_rel_delta,
            config.val_fraction, config.precision) == ("adamw", 256, 1e-2, 7, 10, 0.01, 0.1, "fp32")
    assert not config.drop_last  # small data: every pair each epoch
    by_field = {c["field"]: c for c in changes}
    # device is no recipe change; no bf16 without the hardware; epochs: set explicitly here
    assert set(by_field) == BASE_FIELDS
    assert by_field["lr"] == {"field": "lr", "reference": 1e-5, "used": 1e-2, "why": "small data: 2,400 pairs < 100,000"}
    assert by_field["optimizer"]["reference"] == "lion" and by_field["optimizer"]["used"] == "adamw"
    assert by_field["epochs"]["why"] == "set explicitly"
    # the linear probe's budget of 30 epochs when not set (early stopping may end it sooner)
    assert resolve_recipe("sail-probe", 2400, {"device": "cpu"})[0].epochs == 30
    # forced preset: the reference at any size, but explicit flags still override single values
    exact, changes = resolve_recipe("sail-probe", 2400, {"epochs": 2}, exact=True)
    assert exact == TrainConfig.preset("sail-probe", epochs=2)
    assert changes == [{"field": "epochs", "reference": 100, "used": 2, "why": "set explicitly"}]
    big, changes = resolve_recipe("sail", 500_000)
    assert big == TrainConfig.preset("sail") and changes == []


def test_heads_other_than_linear_keep_lion_for_the_reference_budget():
    """Star or MLP heads on small data (`train` on a small set): Lion at lr 3e-4 for the reference's
    100 epochs; AdamW at 1e-2 for 30 epochs was measured on linear heads only."""
    for explicit in ({"image_head": "star", "device": "cpu"}, {"text_head": "mlp", "device": "cpu"}):
        config, changes = resolve_recipe("sail-probe", 2400, explicit)
        assert (config.optimizer, config.lr, config.epochs) == ("lion", 3e-4, 100)
        assert {"optimizer", "epochs"}.isdisjoint(c["field"] for c in changes)
    star, _ = resolve_recipe("sail", 2400, {"device": "cpu"})
    assert (star.optimizer, star.lr, star.epochs, star.batch_size) == ("lion", 3e-4, 100, 256)
    # Lion asked for on linear heads: Lion's small-data lr and budget, not AdamW's lr 1e-2
    lion, changes = resolve_recipe("sail-probe", 2400, {"optimizer": "lion", "device": "cpu"})
    assert (lion.optimizer, lion.lr, lion.epochs) == ("lion", 3e-4, 100)
    by_field = {c["field"]: c for c in changes}
    assert by_field["lr"]["used"] == 3e-4 and not {"optimizer", "epochs"} & set(by_field)  # lion is the reference's
    # and the other way round: linear heads asked for on the star preset get the probe's recipe
    linear, _ = resolve_recipe("sail", 2400, {"image_head": "linear", "text_head": "linear", "device": "cpu"})
    assert (linear.optimizer, linear.lr, linear.epochs) == ("adamw", 1e-2, 30)


@pytest.mark.parametrize("n_pairs,batch", [(2, 2), (40, 40), (256, 256), (2400, 256), (99_999, 256)])
def test_the_batch_is_capped_at_256_and_never_exceeds_the_pairs(n_pairs, batch):
    assert small_data_changes(n_pairs)["batch_size"] == batch


def test_bf16_is_added_only_where_the_device_multiplies_bf16_natively(bf16_hardware):
    bf16_hardware(True)
    config, changes = resolve_recipe("sail-probe", 2400, {"device": "cpu"})
    by_field = {c["field"]: c for c in changes}
    assert config.precision == "bf16" and set(by_field) == BASE_FIELDS | {"precision"}
    assert by_field["precision"]["reference"] == "fp32" and "--precision amp" in by_field["precision"]["why"]
    # an explicit precision wins; the forced reference recipe and large data never change it
    assert resolve_recipe("sail-probe", 2400, {"device": "cpu", "precision": "fp32"})[0].precision == "fp32"
    assert resolve_recipe("sail-probe", 2400, {"device": "cpu"}, exact=True)[0].precision == "fp32"
    assert resolve_recipe("sail-probe", 500_000, {"device": "cpu"})[0].precision == "fp32"
    bf16_hardware(False)
    assert resolve_recipe("sail-probe", 2400, {"device": "cpu"})[0].precision == "fp32"


def test_native_bf16_reads_the_hardware():
    cpu = bool(torch.cpu._is_avx512_bf16_supported()) or bool(torch.cpu._is_amx_tile_supported())
    assert native_bf16("cpu") is cpu
    assert native_bf16(torch.device("cpu")) is cpu
    assert native_bf16("meta") is False  # a device nobody measured: fp32


def test_bf16_training_matches_fp32_within_its_rounding():
    """The bf16 autocast path trains on the CPU and lands where fp32 does: same held-out loss to
    bf16 rounding, and the same retrieval of held-out pairs."""
    image, text = planted(600, d_img=48, d_txt=32, noise=0.5)
    fits = {}
    for precision in ("fp32", "bf16"):
        config, _ = resolve_recipe("sail-probe", len(image), dict(out_dim=32, epochs=15, device="cpu",
                                                                 precision=precision))
        probe = AlignmentProbe(config, quiet=True).fit(image, text)
        zi, zt = probe.transform_image(image[probe.val_index_]), probe.transform_text(text[probe.val_index_])
        fits[precision] = (probe.best_val_loss_, probe.initial_val_loss_, (zi @ zt.T).argmax(1))
    (loss32, init32, top32), (loss16, init16, top16) = fits["fp32"], fits["bf16"]
    assert loss32 < 0.9 * init32 and loss16 < 0.9 * init16  # both learned
    assert abs(loss16 - loss32) <= 0.02 * loss32
    assert np.mean(top16 == top32) >= 0.9


@pytest.mark.parametrize("precision, expected", [("fp32", None), ("bf16", torch.bfloat16)])
def test_the_step_runs_the_loss_products_in_the_heads_precision(monkeypatch, precision, expected):
    """Under bf16 the loss's products run in bf16 too, as the reference's loss runs inside its
    autocast; the val loss (the stopping rule's input) is computed the same way."""
    from alignprobe.probe.training import losses, step

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("matmul_dtype"))
        return losses.pairwise_sigmoid_loss(*args, **kwargs)

    monkeypatch.setattr(step, "pairwise_sigmoid_loss", recording)
    image, text = planted(120, d_img=24, d_txt=16)
    config, _ = resolve_recipe("sail-probe", len(image), dict(out_dim=16, epochs=2, device="cpu",
                                                             precision=precision))
    AlignmentProbe(config, quiet=True).fit(image, text)
    assert seen and set(seen) == {expected}


def test_records_are_not_reused_across_a_change_of_the_picked_precision(monkeypatch):
    """The small-data recipe picks bf16 from the hardware, so the reuse key's training defaults
    name the pick: a results directory moved to a machine that picks the other precision retrains."""
    from alignprobe.probe.pipelines import workspace

    keys = {}
    for here in (True, False):
        monkeypatch.setattr(workspace, "native_bf16", lambda device, here=here: here)
        keys[here] = workspace.training_defaults_hash("cpu")
    assert keys[True] != keys[False]
    assert workspace.training_defaults_hash("cpu") == keys[False]  # deterministic for one pick
