"""`export_vision_tower` / `alignprobe export`: a SAIL run's vision side as a transformers model
(tiny DINOv2 built from a config, heads trained a few epochs on built-in shapes) that loads
through AutoModel without remote code and serves as LLaVA's vision tower."""
import json
import subprocess
import sys

import pytest
import torch

from alignprobe.config import EncodeOptions
from alignprobe.errors import ValidationError
from alignprobe.probe.pipelines.aligned import load_aligned
from alignprobe.probe.pipelines.train import SailRunConfig, train_pair
import helpers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# resize the short side to 36, centre-crop 32: the crop is part of what the export must reproduce
PROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 36},
             "resample": 3, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
             "do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}
TRAIN = dict(out_dim=16, width=2, epochs=3, text_head="linear", micro_batch=None, chunk_size=None)


def _images():
    """Four images of odd shapes (height, width): the resize and crop are part of the export."""
    return helpers.images(4, sizes=((36, 41), (36, 36), (37, 100), (70, 36)))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return helpers.save_hf_vision(tmp_path_factory.mktemp("tinydino"), num_hidden_layers=3, processor=PROCESSOR)


def _train(root, vision, layer=None, pooling="concat"):
    config = SailRunConfig(vision=str(vision), text="bow", pairs="shapes:train?n=64", labelled=None,
                           retrieval=None, vision_pooling=pooling, vision_layer=layer, train=dict(TRAIN))
    run = root / f"run_{pooling}_{layer}"
    train_pair(config, run, options=EncodeOptions(quiet=True, num_workers=0, cache_dir=str(root / "cache"),
                                                  device="cpu"))
    return run


@pytest.fixture(scope="module")
def exported(dino_dir, tmp_path_factory):
    from alignprobe import export_vision_tower

    root = tmp_path_factory.mktemp("export")
    run = _train(root, dino_dir)
    out = export_vision_tower(run, root / "tower")
    return run, out


@pytest.mark.slow  # a fresh interpreter; test_backbones_registry::test_import_is_light covers the light import
def test_import_alignprobe_registers_without_importing_transformers(exported):
    _, out = exported
    code = ("import sys, alignprobe; assert 'transformers' not in sys.modules and 'torch' not in sys.modules;"
            "from transformers import AutoConfig, AutoModel;"
            f"m = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=False);"
            "print(type(m).__name__, AutoConfig.from_pretrained(%r).model_type)" % str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["AlignedVisionTowerModel", "alignprobe_vision_tower"]


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_tower_module_first_still_registers_it(exported):
    """`alignprobe export` imports the tower module before transformers' auto-model module: the
    import hook then met the module half-loaded, warned and never registered it, so AutoModel did
    not know the tower in that process."""
    _, out = exported
    code = ("import alignprobe.probe.export.tower;"
            "from transformers import AutoModel;"
            f"print(type(AutoModel.from_pretrained({str(out)!r})).__name__)")
    res = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "AlignedVisionTowerModel"


def test_tower_outputs_equal_alignprobe_features(exported):
    from transformers import AutoModel

    from alignprobe.probe.evals.segmentation import dense_features

    run, out = exported
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "alignprobe_vision_tower" and config["backbone_config"]["model_type"] == "dinov2"
    assert config["pooling"] == "concat" and config["layer"] is None and config["hidden_size"] == 16
    assert config["head"] == {"in_dim": 64, "out_dim": 16, "kind": "star", "width": 2}
    tower = AutoModel.from_pretrained(out, trust_remote_code=False).eval()
    assert tower.config.patch_size == 8 and tower.config.image_size == 32 and tower.patch_size == 8

    aligned = load_aligned(run, device="cpu")
    encoder = aligned.encoder("vision")
    images = _images()
    x = encoder.collate([encoder.preprocess(im) for im in images])
    with torch.no_grad():
        res = tower(pixel_values=x, output_hidden_states=True)
    assert res.last_hidden_state.shape == (4, 1 + 16, 16) and res.pooler_output.shape == (4, 16)
    assert res.hidden_states[-1] is res.last_hidden_state
    # pooler_output: the run's image embedding before normalisation
    with torch.no_grad():
        pooled = aligned.model.image_head(encoder.encode(images))
    torch.testing.assert_close(res.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.nn.functional.normalize(res.pooler_output, dim=-1),
                               aligned.encode_image(images), atol=1e-5, rtol=1e-5)
    # patch tokens: alignprobe's own per-patch aligned features (segmentation's), row-major
    with torch.no_grad():
        dense = aligned.model.image_head(dense_features(encoder, x))
    torch.testing.assert_close(res.last_hidden_state[:, 1:], dense.flatten(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.last_hidden_state[:, 0], res.pooler_output)
    plain = tower(pixel_values=x, return_dict=False)
    assert len(plain) == 2 and torch.allclose(plain[0], res.last_hidden_state)


def test_image_processor_reproduces_the_encoder_preprocessing(exported):
    from transformers import AutoImageProcessor

    run, out = exported
    encoder = load_aligned(run, device="cpu").encoder("vision")
    images = _images()  # crop margins 9, 0, 65 (after a resize) and 38 pixels
    pil = AutoImageProcessor.from_pretrained(out, backend="pil")
    fast = AutoImageProcessor.from_pretrained(out)
    ours = encoder.collate([encoder.preprocess(im) for im in images])
    torch.testing.assert_close(pil(images, return_tensors="pt")["pixel_values"], ours, atol=1e-6, rtol=0)
    # torchvision's tensor resize: within about one grey level of PIL's
    grey = 1.5 / 255 / min(PROCESSOR["image_std"])
    assert (fast(images, return_tensors="pt")["pixel_values"] - ours).abs().max() <= grey
    # documented difference: a long-side margin of 4k + 3 pixels (36 x 39 -> margin 7) is cropped one
    # pixel further by transformers (floor) than by torchvision / alignprobe (round half to even)
    odd = helpers.images(1, sizes=[(39, 36)])
    shifted, ours = pil(odd, return_tensors="pt")["pixel_values"][0], encoder.preprocess(odd[0])
    assert not torch.allclose(shifted, ours)
    torch.testing.assert_close(shifted[:, 1:], ours[:, :-1], atol=1e-6, rtol=0)


def test_llava_uses_the_exported_tower(exported, tmp_path):
    from transformers import (AutoConfig, AutoModel, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    _, out = exported
    tower = AutoModel.from_pretrained(out).eval()
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    x = torch.randn(1, 3, 32, 32)
    for strategy, n_tokens in (("default", 16), ("full", 17)):
        torch.manual_seed(0)
        config = LlavaConfig(vision_config=AutoConfig.from_pretrained(out), text_config=text, image_token_index=63,
                             vision_feature_layer=-1, vision_feature_select_strategy=strategy,
                             image_seq_length=n_tokens)
        llava = LlavaForConditionalGeneration(config).eval()
        llava.model.vision_tower.load_state_dict(tower.state_dict())
        with torch.no_grad():
            feats = llava.get_image_features(pixel_values=x, vision_feature_layer=-1,
                                             vision_feature_select_strategy=strategy).pooler_output[0]
            expected = tower(pixel_values=x).last_hidden_state[0, 16 - n_tokens + 1:]
            assert feats.shape == (n_tokens, 32)
            torch.testing.assert_close(feats, llava.model.multi_modal_projector(expected))
            ids = torch.tensor([[1] + [63] * n_tokens + [5, 6, 7]])
            logits = llava(input_ids=ids, pixel_values=x).logits
            assert logits.shape == (1, ids.shape[1], 64) and torch.isfinite(logits).all()
            gen = llava.generate(input_ids=ids, pixel_values=x, max_new_tokens=3, do_sample=False)
        assert gen.shape == (1, ids.shape[1] + 3)
    # a saved LLaVA with the tower reloads the ordinary way (the tower's config is in its config.json)
    llava.save_pretrained(tmp_path / "llava")
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    assert type(again.model.vision_tower).__name__ == "AlignedVisionTowerModel"
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=x).logits, logits)


def test_layer_trained_run_exports_that_layer(dino_dir, tmp_path):
    from transformers import AutoModel

    from alignprobe import export_vision_tower

    run = _train(tmp_path, dino_dir, layer=1, pooling="cls")
    out = export_vision_tower(run, tmp_path / "tower")
    assert json.loads((out / "config.json").read_text())["layer"] == 1
    aligned = load_aligned(run, device="cpu")
    encoder = aligned.encoder("vision")
    assert encoder.spec.layer == 1  # load_aligned rebuilds the trained layer (the run's EncoderRequest)
    assert json.loads((out / "config.json").read_text())["alignprobe"]["request"]["layer"] == 1
    tower = AutoModel.from_pretrained(out).eval()
    images = _images()
    x = encoder.collate([encoder.preprocess(im) for im in images])
    with torch.no_grad():
        res = tower(pixel_values=x)
        pooled = aligned.model.image_head(encoder.encode(images))
        last_block = aligned.model.image_head(encoder.at_layer(3).encode(images))
    torch.testing.assert_close(res.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(res.pooler_output, last_block, atol=1e-3)  # the layer matters


@pytest.mark.parametrize("family, pooling", [("vit", "mean"), ("dinov2_reg", "concat")])
def test_other_backbones_and_poolings(family, pooling, tmp_path):
    """ViT (mean of the patches: each patch token through the head) and DINOv2 with registers (the
    register tokens are neither the global token nor patches)."""
    from transformers import AutoModel

    from alignprobe import export_vision_tower
    from alignprobe.probe.evals.segmentation import dense_features

    extra = {"num_register_tokens": 2} if family == "dinov2_reg" else {}
    folder = helpers.save_hf_vision(tmp_path / family, family, processor=PROCESSOR, num_hidden_layers=3, **extra)
    run = _train(tmp_path, folder, pooling=pooling)
    tower = AutoModel.from_pretrained(export_vision_tower(run, tmp_path / "tower")).eval()
    aligned = load_aligned(run, device="cpu")
    encoder = aligned.encoder("vision")
    images = _images()
    x = encoder.collate([encoder.preprocess(im) for im in images])
    with torch.no_grad():
        res = tower(pixel_values=x)
        pooled = aligned.model.image_head(encoder.encode(images))
        dense = aligned.model.image_head(dense_features(encoder, x)).flatten(1, 2)
    assert res.last_hidden_state.shape == (4, 17, 16)
    torch.testing.assert_close(res.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.last_hidden_state[:, 1:], dense, atol=1e-5, rtol=1e-5)


def test_unsupported_encoders_fail_clearly(tmp_path):
    from alignprobe import export_vision_tower

    config = SailRunConfig(vision="pixels-8", text="bow", pairs="shapes:train?n=64", labelled=None,
                           retrieval=None, train=dict(TRAIN))
    run = tmp_path / "run"
    train_pair(config, run, options=EncodeOptions(quiet=True, num_workers=0, cache_dir=str(tmp_path / "c"),
                                                  device="cpu"))
    with pytest.raises(ValidationError, match="control.*Supported: transformers vision encoders"):
        export_vision_tower(run, tmp_path / "tower")
    assert not (tmp_path / "tower").exists()


def test_export_command(exported, tmp_path):
    run, _ = exported
    res = helpers.invoke("export", "--model", run, "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t" / "model.safetensors").is_file() and "AutoModel.from_pretrained" in res.output
    again = helpers.invoke("export", "--model", run, "--out", tmp_path / "t", catch_exceptions=True)
    assert again.exit_code != 0 and "--overwrite" in again.output and "Traceback" not in again.output
    forced = helpers.invoke("export", "--model", run, "--out", tmp_path / "t", "--overwrite")
    assert forced.exit_code == 0, forced.output
