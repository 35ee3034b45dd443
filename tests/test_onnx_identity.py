"""The backend that will run (onnxruntime or torch) is part of an encoder's identity before it loads:
a run's reuse key and the lazy memo's key follow `ALIGNPROBE_ONNX`, and the plan agrees with what a
built encoder runs."""
import pytest

from alignprobe import create_text_encoder, create_vision_encoder
from alignprobe.backbones.execution import ONNX_BUILDERS, planned_execution
from alignprobe.backbones.factory import builder_target
from alignprobe.backbones.request import EncoderRequest
from alignprobe.config import EncodeOptions
from alignprobe.probe.embeddings.lazy import LazyEncoder
from alignprobe.probe.pipelines.workspace import Workspace

pytest.importorskip("onnxruntime")


def plan(request: EncoderRequest, dtype: str = "float32") -> str:
    spec = request.spec()
    builder = builder_target(spec, request.modality)
    return planned_execution(builder, request.modality, device_type="cpu", dtype=dtype, layer=spec.layer)


def reuse_key(vision: EncoderRequest, text: EncoderRequest, tmp_path) -> tuple[str, Workspace]:
    ws = Workspace(vision, text, EncodeOptions(device="cpu", quiet=True, cache_dir=str(tmp_path / "cache")))
    return ws.reuse_key({"seed": 0}, {}), ws


@pytest.mark.parametrize("family", ["timm", "dinov2"])
def test_the_plan_is_what_a_built_encoder_runs(tiny_model, family, monkeypatch):
    request = EncoderRequest.create("vision", str(tiny_model(family)))
    assert plan(request) == create_vision_encoder(request.spec(), device="cpu").execution == "onnxruntime"
    assert plan(request, "bfloat16") == "torch"
    assert plan(EncoderRequest.create("vision", str(tiny_model(family)), layer=1)) == "torch"
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    assert plan(request) == create_vision_encoder(request.spec(), device="cpu").execution == "torch"


def test_encoders_without_the_choice_plan_torch(tiny_model):
    for request in (EncoderRequest.create("vision", "pixels-8"), EncoderRequest.create("text", "bow"),
                    EncoderRequest.create("text", str(tiny_model("sentence_transformers")))):
        assert builder_target(request.spec(), request.modality) not in ONNX_BUILDERS
        assert plan(request) == "torch"
    assert not getattr(create_vision_encoder("pixels-8"), "onnx_capable", False)
    assert not getattr(create_text_encoder(tiny_model("sentence_transformers"), device="cpu"), "onnx_capable", False)


def test_every_listed_builder_makes_an_onnx_capable_encoder(tiny_model):
    from alignprobe.backbones.hf_common import import_string
    from alignprobe.backbones.hf_vision import HFVisionEncoder
    from alignprobe.backbones.timm_vision import TimmVisionEncoder

    assert HFVisionEncoder.onnx_capable and TimmVisionEncoder.onnx_capable
    assert builder_target(EncoderRequest.create("vision", "random-vit").spec(), "vision") in ONNX_BUILDERS
    for target in ONNX_BUILDERS:
        import_string(target)  # each names a real function


def test_the_reuse_key_follows_the_toggle_without_loading(tiny_model, tmp_path, monkeypatch):
    vision = EncoderRequest.create("vision", str(tiny_model("timm")))
    text = EncoderRequest.create("text", "bow")
    on, ws = reuse_key(vision, text, tmp_path)
    assert reuse_key(vision, text, tmp_path)[0] == on  # stable
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    off, ws_off = reuse_key(vision, text, tmp_path)
    assert off != on
    assert not any(ws.encoder(m).is_loaded or ws_off.encoder(m).is_loaded for m in ("vision", "text"))
    # encoders that have no choice keep their keys whatever the toggle says
    controls = EncoderRequest.create("vision", "pixels-8")
    monkeypatch.delenv("ALIGNPROBE_ONNX")
    before = reuse_key(controls, text, tmp_path)[0]
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    assert reuse_key(controls, text, tmp_path)[0] == before


def test_the_lazy_memo_is_kept_per_backend(tiny_model, tmp_path, monkeypatch):
    request = EncoderRequest.create("vision", str(tiny_model("timm")))
    on = LazyEncoder(request, memo_dir=tmp_path, device="cpu")
    assert on.manifest()["execution"] == "onnxruntime" and on.loads == 1
    assert LazyEncoder(request, memo_dir=tmp_path, device="cpu").manifest()["execution"] == "onnxruntime"
    on_memo = on.memo_path()
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    off = LazyEncoder(request, memo_dir=tmp_path, device="cpu")
    assert off.memo_path() != on_memo
    assert off.manifest()["execution"] == "torch" and off.loads == 1
    again = LazyEncoder(request, memo_dir=tmp_path, device="cpu")
    assert again.manifest()["execution"] == "torch" and again.loads == 0  # its own memo, no load
