"""`export_vision_tower`: a SAIL run's vision side as a transformers model directory.

The directory holds ``config.json`` (model type ``alignprobe_vision_tower``: the backbone's own
transformers config, the layer, pooling and head), ``model.safetensors`` (backbone and head) and
``preprocessor_config.json`` (a ``BitImageProcessor`` with the encoder's size, crop, mean and
std), so ``AutoModel.from_pretrained(DIR)`` and ``AutoImageProcessor.from_pretrained(DIR)`` load
it after ``import alignprobe``, without remote code (see `alignprobe.probe.export.tower`).

Supported: vision encoders loaded through transformers whose output is patch tokens (DINOv2,
DINOv2 with registers, ViT, DINO, I-JEPA, MAE, CLIP / SigLIP vision towers; the packaged
``dinov2-s-focus``, converted from ONNX into a ``Dinov2Model``, is one) with a token pooling
(``concat``, ``cls`` or ``mean``). Not supported, with an error saying so: the controls, timm
models (ViTs and CNNs; a CNN's feature-map cells would be its tokens, not exported yet), and
``pooler`` pooling (the model's own head has no per-patch counterpart).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from alignprobe._version import __version__
from alignprobe.console import quiet_loading
from alignprobe.errors import ValidationError
from alignprobe.probe.pipelines.aligned import load_aligned

SUPPORTED = ("transformers vision encoders with patch tokens (DINOv2, DINOv2 with registers, ViT, DINO, "
             "I-JEPA, MAE, CLIP / SigLIP vision) and pooling concat, cls or mean")
# PIL's resampling codes, as transformers image processors store them
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def image_processor_config(pre) -> dict:
    """A ``BitImageProcessor`` config that reproduces a `Preprocessing` (resize, crop, normalise).

    Its PIL backend (``AutoImageProcessor.from_pretrained(DIR, backend="pil")``) gives the
    encoder's pixel values exactly, except that transformers floors half the crop margin where
    torchvision (and alignprobe) rounds it: when the resized long side exceeds the crop by
    4k + 3 pixels the crop starts one pixel further. The default torchvision backend resizes
    tensors, within about one grey level of PIL.
    """
    out = {"image_processor_type": "BitImageProcessor", "do_convert_rgb": True, "do_resize": True,
           "resample": _RESAMPLE[pre.interpolation], "do_rescale": True, "rescale_factor": 1 / 255,
           "do_normalize": True, "image_mean": list(pre.mean), "image_std": list(pre.std)}
    if pre.crop_mode == "squash":
        out.update(size={"height": pre.size, "width": pre.size}, do_center_crop=False)
    else:
        out.update(size={"shortest_edge": pre.resize_size}, do_center_crop=True,
                   crop_size={"height": pre.size, "width": pre.size})
    return out


def _unsupported(encoder, why: str) -> ValidationError:
    spec = encoder.spec
    return ValidationError(f"cannot export the vision encoder {spec.name!r} ({spec.backend}, "
                           f"{type(encoder).__name__}) as a vision tower: {why}. Supported: {SUPPORTED}")


def _trained_encoder(aligned):
    """The frozen encoder of the run exactly as trained on (`load_aligned` rebuilds its
    `EncoderRequest`: name, layer, pooling, revision), with its weights loaded."""
    encoder = aligned.encoder("vision")
    if callable(getattr(type(encoder), "load", None)):  # a LazyEncoder stand-in: the weights are needed
        encoder = encoder.load()
    trained = aligned.request("vision").layer
    if trained is not None and encoder.spec.layer != trained:  # one identity, or no export
        raise ValidationError(f"the run was trained on layer {trained} of {encoder.spec.base_name!r} but its "
                              f"encoder was rebuilt at layer {encoder.spec.layer}; cannot export a tower that "
                              "differs from the trained one")
    return encoder


def _check_supported(encoder):
    # tower imports transformers, whose import runs our Auto-class hook (probe/export/__init__.py), which
    # imports tower: imported at module level this is a circular import, so here when first used.
    from transformers import PreTrainedModel

    from alignprobe.probe.export.tower import TOKEN_POOLINGS

    model = getattr(encoder, "model", None)
    if encoder.spec.is_control:
        raise _unsupported(encoder, "it is a control, not a model with patch tokens")
    if encoder.spec.backend != "transformers" or not isinstance(model, PreTrainedModel):
        raise _unsupported(encoder, "only models loaded through transformers are exported (a timm CNN's "
                                    "feature-map cells are not exported as tokens)")
    if getattr(model.config, "patch_size", None) is None:
        raise _unsupported(encoder, "its transformers config has no patch_size, so it has no patch tokens")
    if encoder.spec.pooling not in TOKEN_POOLINGS:
        raise _unsupported(encoder, f"pooling {encoder.spec.pooling!r} has no per-patch counterpart")
    return model


def _write_atomic_dir(build, out_dir: Path, overwrite: bool) -> None:
    """``build(tmp)`` fills a temporary sibling of ``out_dir``, which then replaces it."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValidationError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) or "
                              "choose another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        build(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_vision_tower(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, which: str = "best",
                        overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Write the run's frozen vision backbone (at its trained layer) and trained vision head as a
    transformers model directory ``out_dir``; returns it.

    ``which``: ``"best"`` or ``"latest"`` weights of the run (as `load_aligned`); ``overwrite``:
    replace a non-empty ``out_dir`` (the new directory is built beside it, then renamed);
    ``trust_remote_code``: let the run's encoder run model code the registry does not pin (as
    `load_aligned`). Raises
    `ValidationError` for an encoder that is not a transformers model with patch tokens.
    """
    import torch

    from alignprobe.probe.export.tower import AlignedVisionTowerConfig, AlignedVisionTowerModel  # as above

    aligned = load_aligned(run_dir, device="cpu", which=which, trust_remote_code=trust_remote_code)
    encoder = _trained_encoder(aligned)
    backbone = _check_supported(encoder)
    head = aligned.model.image_head
    if head.in_dim != encoder.dim:
        raise ValidationError(f"the vision head of {run_dir} takes {head.in_dim}-d features but "
                              f"{encoder.spec.name!r} gives {encoder.dim}-d ones; the run does not match the encoder")
    pre = encoder.spec.preprocessing
    backbone_config = backbone.config.to_dict()
    backbone_config.pop("dtype", None)
    backbone_config.pop("torch_dtype", None)
    manifest = encoder.manifest()
    request = aligned.request("vision").to_dict()
    config = AlignedVisionTowerConfig(
        backbone_config=backbone_config, layer=encoder.spec.layer, pooling=encoder.spec.pooling,
        head={"in_dim": head.in_dim, "out_dim": head.out_dim, "kind": head.kind, "width": head.width},
        hidden_size=head.out_dim, image_size=pre.size, patch_size=int(_first(backbone.config.patch_size)),
        num_channels=int(getattr(backbone.config, "num_channels", 3)),
        alignprobe={"run": str(Path(run_dir).resolve()), "which": which, "alignprobe_version": __version__,
                    "vision": {k: manifest.get(k) for k in ("name", "hub_id", "revision", "pooling", "dim",
                                                             "layer", "preprocessing", "local_path")},
                    "request": request})
    tower = AlignedVisionTowerModel(config)
    if type(tower.backbone) is not type(backbone):
        raise _unsupported(encoder, f"AutoModel builds {type(tower.backbone).__name__} from its config, but "
                                    f"the run used {type(backbone).__name__}")
    with torch.no_grad():
        tower.backbone.load_state_dict({k: v.float() for k, v in backbone.state_dict().items()})
        tower.head.load_state_dict({k: v.float() for k, v in head.state_dict().items()})
    tower.eval()

    def build(tmp: Path) -> None:
        with quiet_loading():  # no "Writing model shards" bar for one small file
            tower.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(image_processor_config(pre), indent=2) + "\n")

    out_dir = Path(out_dir)
    _write_atomic_dir(build, out_dir, overwrite)
    return out_dir


def _first(value):
    return value if isinstance(value, int) else value[0]
