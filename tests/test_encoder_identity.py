"""One encoder identity: `EncoderRequest` keys and round trips, and a model trained on a chosen
layer (or pooling) reloads exactly those features through `load_aligned`, `eval` and `classify`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe import EncoderRequest
from alignprobe.backbones import create_vision_encoder
from alignprobe.config import EncodeOptions
from alignprobe.errors import UnknownEncoderError, ValidationError
from alignprobe.probe.pipelines.aligned import load_aligned, request_from_entry
from alignprobe.probe.pipelines.train import SailRunConfig, evaluate_checkpoint, train_pair
import helpers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = dict(out_dim=8, epochs=2, image_head="linear", text_head="linear", device="cpu")
DATA = dict(pairs="shapes:train?n=60", labelled="shapes:test?n=30", retrieval=None)


# --------------------------------------------------------------------------- EncoderRequest


def test_request_round_trips_through_a_dict_and_json():
    request = EncoderRequest.create("text", "minilm", pooling="cls", prefix="query: ", max_length=64)
    data = json.loads(json.dumps(request.to_dict()))
    again = EncoderRequest.from_dict(data)
    assert again == request and again.key() == request.key() and hash(again) == hash(request)
    assert again.overrides() == {"pooling": "cls", "prefix": "query: ", "max_length": 64}


@pytest.mark.parametrize("change", [dict(layer=2), dict(pooling="cls"), dict(revision="abc123")])
def test_a_feature_setting_changes_the_key(change):
    base = EncoderRequest.create("vision", "dinov2-s-focus")
    assert base.replace(**change).key() != base.key()


def test_a_name_and_its_alias_or_layer_suffix_share_one_key():
    assert EncoderRequest.create("vision", "dinov2").key() == EncoderRequest.create("vision", "dinov2-vitl14").key()
    assert (EncoderRequest.create("vision", "dinov2-s-focus@8").key()
            == EncoderRequest.create("vision", "dinov2-s-focus", layer=8).key())
    assert EncoderRequest.create("vision", "dinov2-s-focus@8").key() != EncoderRequest.create(
        "vision", "dinov2-s-focus").key()


def test_bad_requests_are_refused_with_what_to_fix(tmp_path):
    with pytest.raises(ValidationError, match="layer must be a block index"):
        EncoderRequest.create("vision", "pixels-8", layer=-1)
    with pytest.raises(ValidationError, match="control 'bow' has no layers"):
        EncoderRequest.create("text", "bow", layer=1).key()
    with pytest.raises(ValidationError, match="unknown encoder-request field"):
        EncoderRequest.from_dict({"modality": "vision", "name": "pixels-8", "colour": "red"})
    with pytest.raises(UnknownEncoderError, match="cannot resolve the vision encoder 'no-such-encoder'"):
        EncoderRequest.create("vision", "no-such-encoder").key()
    gone = tmp_path / "moved" / "model"
    with pytest.raises(UnknownEncoderError, match="cannot resolve the vision encoder.*moved/model"):
        EncoderRequest.create("vision", str(gone)).spec()


def test_legacy_entries_rebuild_their_layer_from_the_manifest():
    """aligned.json of earlier versions named the bare encoder; the manifest kept the layer."""
    entry = {"name": "dinov2-s-focus@8", "requested": "dinov2-s-focus", "pooling": "concat",
             "manifest": {"layer": 8}}
    request = request_from_entry(entry, "vision")
    assert request.layer == 8 and request.key() == EncoderRequest.create("vision", "dinov2-s-focus@8").key()


# --------------------------------------------------------------------------- train on a layer, reload it


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    return helpers.save_hf_vision(tmp_path_factory.mktemp("identity") / "dinov2", num_hidden_layers=3)


def _trained(tmp_path, folder, **encoder_settings):
    config = SailRunConfig(vision=str(folder), text="bow", train=dict(TRAIN), **DATA, **encoder_settings)
    result = train_pair(config, tmp_path / "run", options=EncodeOptions(device="cpu", quiet=True))
    return result.run_dir


def _features(aligned, images):
    return aligned.encoder("vision").encode(images)


def test_a_model_trained_on_a_layer_reloads_that_layer(tmp_path, tiny_dinov2):
    run_dir = _trained(tmp_path, tiny_dinov2, vision_layer=1)
    aligned = load_aligned(run_dir, device="cpu")
    assert aligned.request("vision").layer == 1
    images = helpers.images(4)
    layer1 = create_vision_encoder(str(tiny_dinov2), layer=1, device="cpu").encode(images)
    last = create_vision_encoder(str(tiny_dinov2), device="cpu").encode(images)
    assert layer1.shape == last.shape and not torch.allclose(layer1, last, atol=1e-3)
    torch.testing.assert_close(_features(aligned, images), layer1)
    # the embedding load_aligned computes is the layer-1 features through the trained head
    expected = aligned.transform_image(layer1)
    torch.testing.assert_close(aligned.encode_image(images), expected)
    assert not torch.allclose(aligned.encode_image(images), aligned.transform_image(last), atol=1e-4)

    # eval rebuilds the same encoder: its scores equal those computed from layer-1 features
    result = evaluate_checkpoint(run_dir, labelled="shapes:test?n=30", retrieval="",
                                 options=EncodeOptions(device="cpu", quiet=True))
    trained = json.loads((run_dir / "aligned.json").read_text())
    assert result["metrics"]["zero_shot_top1"] == pytest.approx(trained["metrics"]["zero_shot_top1"])

    # classify through the CLI names the same classes as the Python API on layer-1 features
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for i, image in enumerate(images):
        files.append(folder / f"img{i}.png")
        image.save(files[-1])
    out = tmp_path / "classify.json"
    res = helpers.invoke("classify", "--model", run_dir, "--images", folder, "--classes", "circle,square,triangle",
                 "--device", "cpu", "--json", out)
    assert res.exit_code == 0, res.output
    api = aligned.classify(files, ["circle", "square", "triangle"])
    by_file = {row["image"]: row["class"] for row in json.loads(out.read_text())["predictions"]}
    assert [by_file[str(f)] for f in files] == api.labels


def test_a_model_trained_with_a_pooling_override_reloads_that_pooling(tmp_path, tiny_dinov2):
    run_dir = _trained(tmp_path, tiny_dinov2, vision_pooling="cls")
    aligned = load_aligned(run_dir, device="cpu")
    assert aligned.request("vision").pooling == "cls"
    images = helpers.images(4)
    cls_features = create_vision_encoder(str(tiny_dinov2), pooling="cls", device="cpu").encode(images)
    torch.testing.assert_close(_features(aligned, images), cls_features)
    record = json.loads((run_dir / "aligned.json").read_text())
    assert record["vision"]["request"]["pooling"] == "cls"


# --------------------------------------------------------------------------- train: reuse and resume


def test_train_reuses_a_record_only_for_the_same_inputs(tmp_path):
    options = EncodeOptions(device="cpu", quiet=True)
    pairs = tmp_path / "pairs.csv"
    rows = ["image,caption"] + [f"{tmp_path / f'i{i}.png'},a {c} shape" for i, c in
                                enumerate(["red", "blue", "green", "red", "blue", "green"] * 2)]
    for i in range(12):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(tmp_path / f"i{i}.png")
    pairs.write_text("\n".join(rows) + "\n")
    config = SailRunConfig(vision="pixels-8", text="bow", pairs=f"csv:{pairs}", labelled=None, retrieval=None,
                           train=dict(TRAIN, epochs=1))
    first = train_pair(config, tmp_path / "run1", options=options, results_dir=tmp_path / "results")
    again = train_pair(config, tmp_path / "run2", options=options, results_dir=tmp_path / "results")
    assert not first.reused and again.reused
    # other storage dtype: other numbers, so no reuse
    fp32 = train_pair(config, tmp_path / "run3", options=EncodeOptions(device="cpu", quiet=True,
                                                                        storage_dtype="fp32"),
                      results_dir=tmp_path / "results")
    assert not fp32.reused
    # the pairs file edited in place: same config hash, other data -> recomputed
    pairs.write_text("\n".join(rows[:1] + [r.replace("shape", "thing") for r in rows[1:]]) + "\n")
    edited = train_pair(config, tmp_path / "run4", options=options, results_dir=tmp_path / "results")
    assert not edited.reused and edited.record["reuse_key"] != first.record["reuse_key"]

    # resuming run4 on the edited data is fine; on other data it is refused, naming the data
    pairs.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValidationError, match="cannot resume .*the pairs data"):
        train_pair(config, tmp_path / "run4", options=options, resume=True)


def test_paths_read_from_a_run_directory_stay_inside_it(tmp_path):
    """aligned.json's weights and checkpoints/latest.json are data: they cannot point elsewhere."""
    from alignprobe.probe.training.checkpoint import CheckpointStore

    config = SailRunConfig(vision="pixels-8", text="bow", labelled=None, retrieval=None,
                           pairs="shapes:train?n=60", train=dict(TRAIN, epochs=1))
    run_dir = train_pair(config, tmp_path / "run", options=EncodeOptions(device="cpu", quiet=True)).run_dir
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    info = json.loads((run_dir / "aligned.json").read_text())
    (run_dir / "aligned.json").write_text(json.dumps({**info, "weights": "../elsewhere/model.safetensors"}))
    with pytest.raises(ValidationError, match="points outside the run directory"):
        load_aligned(run_dir)
    store = CheckpointStore(run_dir)
    pointer = store.root / "latest.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "dir": "../../elsewhere"}))
    with pytest.raises(ValidationError, match="points outside the run directory"):
        store.path("latest")
