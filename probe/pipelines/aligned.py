"""A trained SAIL model as a CLIP-like model: frozen encoders + alignment heads.

    model = alignprobe.load_aligned("runs/dinov2-l__gte")
    img = model.encode_image([PIL.Image.open("cat.jpg")])       # (1, 1024), unit rows
    txt = model.encode_text(["a photo of a cat"])                # (1, 1024)
    result = model.classify(images, ["cat", "dog"], templates="simple")
    result.labels, result.scores, result.probs

The encoders are rebuilt from the `EncoderRequest` each side was trained on,
as recorded in the model's ``aligned.json`` (name, layer, pooling, revision and
every other override), loaded on first use and checked against the heads. A
probe saved with `AlignmentProbe.save` and a SAIL run write the same format;
the older formats are read too (see `alignprobe.probe.training.model_file`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alignprobe.backbones.devices import resolve_device
from alignprobe.backbones.request import EncoderRequest
from alignprobe.errors import ValidationError
from alignprobe.probe.data.templates import load_templates
from alignprobe.probe.embeddings.lazy import EncoderPool
from alignprobe.probe.data.datasets import decode_image
from alignprobe.probe.training.checkpoint import CheckpointStore, load_weights
from alignprobe.probe.training.heads import AlignmentModel
from alignprobe.probe.training.model_file import MODEL_FILE, inside, read_model_file

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class Classification:
    """Zero-shot predictions for ``n`` images over ``C`` classes.

    ``scores``: ``(n, C)`` cosine similarity of each image with each class
    embedding (the mean of its prompts); ``probs``: ``(n, C)`` the model's
    sigmoid probability ``sigmoid(exp(t) * score + b)`` that the image shows
    the class (SigLIP-style: independent per class, not summing to one);
    ``indices``/``labels``: the best class of each image.
    """

    class_names: list[str]
    scores: np.ndarray
    probs: np.ndarray

    @property
    def indices(self) -> np.ndarray:
        return self.scores.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` best (class, score) pairs of each image."""
        k = min(k, len(self.class_names))
        order = np.argsort(-self.scores, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(self.scores[i, j])) for j in row] for i, row in enumerate(order)]


def request_from_entry(entry: dict, modality: str, where: str = "the model file") -> EncoderRequest:
    """The `EncoderRequest` a recorded encoder entry stands for.

    Current files record the request itself. Older ones recorded a name, the name the user
    typed (``requested``), a local path and the pooling -- and, in the manifest, the layer the
    features came from, which is used so that a model trained on block N reloads block N.
    """
    if entry.get("request"):
        return EncoderRequest.from_dict(entry["request"])
    name = entry.get("local_path") or entry.get("requested") or entry.get("name")
    if not name:
        raise ValidationError(f"{where} does not name its {modality} encoder")
    manifest = entry.get("manifest") or {}
    layer = entry.get("layer", manifest.get("layer"))
    if layer is not None and str(name).endswith(f"@{layer}"):
        layer = None  # the name already says it
    return EncoderRequest.create(modality, name, pooling=entry.get("pooling"), layer=layer)


class AlignedModel:
    """Frozen vision and text encoders with trained alignment heads (see the module docstring)."""

    def __init__(self, model: AlignmentModel, info: dict[str, Any], path: Path | None = None, *,
                 device: str | torch.device = "auto", encoder_dtype: str | None = None,
                 pool: EncoderPool | None = None, trust_remote_code: bool = False):
        self.model = model
        self.trust_remote_code = trust_remote_code
        self.info = info
        self.path = path
        self.device = resolve_device(device)
        self.encoder_dtype = encoder_dtype
        self.model.to(self.device).eval()
        self._pool = pool if pool is not None else EncoderPool(device=self.device, dtype=encoder_dtype)
        self._checked: set[str] = set()

    def use_pool(self, pool: EncoderPool) -> None:
        """Take the frozen encoders from ``pool`` (shared with a `Workspace`, so each loads once)."""
        self._pool = pool
        self._checked.clear()

    # ---- facts
    @property
    def out_dim(self) -> int:
        return self.model.image_head.out_dim

    def encoder_info(self, modality: str) -> dict:
        entry = self.info.get(modality)
        if not isinstance(entry, dict) or not (entry.get("request") or entry.get("name")):
            raise ValidationError(
                f"this checkpoint does not name its {modality} encoder (it was trained on raw embeddings); "
                f"use transform_{'image' if modality == 'vision' else 'text'}(embeddings) instead")
        return entry

    def request(self, modality: str) -> EncoderRequest:
        """The `EncoderRequest` the ``modality`` side was trained on (as recorded).

        A recorded ``trust_remote_code`` is dropped unless this model was loaded with
        ``trust_remote_code=True``: a run directory never enables remote code by itself."""
        request = request_from_entry(self.encoder_info(modality), modality, str(self.path or "this model"))
        options = request.option_dict()
        if "trust_remote_code" in options and not self.trust_remote_code:
            options.pop("trust_remote_code")
            request = request.replace(options=options)
        return request

    def encoder(self, modality: str):
        """The frozen encoder of ``"vision"`` or ``"text"`` exactly as trained on, loaded on first use."""
        request = self.request(modality)
        encoder = self._pool.get(request)
        if modality not in self._checked:
            head = self.model.image_head if modality == "vision" else self.model.text_head
            if encoder.dim != head.in_dim:
                raise ValidationError(
                    f"the {modality} encoder {request.label!r} produces {encoder.dim}-d features but the head "
                    f"was trained on {head.in_dim}-d ones; the encoder's weights or pooling changed since training")
            self._checked.add(modality)
        return encoder

    # ---- embeddings
    @torch.no_grad()
    def _project(self, head, x, batch_size: int = 8192) -> torch.Tensor:
        if not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != head.in_dim:
            raise ValidationError(f"expected embeddings of shape (n, {head.in_dim}), got {tuple(x.shape)}")
        parts = [F.normalize(head(x[s : s + batch_size].to(self.device, torch.float32)).float(), dim=-1).cpu()
                 for s in range(0, len(x), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, head.out_dim)

    def transform_image(self, embeddings) -> torch.Tensor:
        """Frozen-encoder image embeddings ``(n, d_img)`` -> unit ``(n, out_dim)`` (CPU fp32)."""
        return self._project(self.model.image_head, embeddings)

    def transform_text(self, embeddings) -> torch.Tensor:
        """Frozen-encoder text embeddings ``(m, d_txt)`` -> unit ``(m, out_dim)`` (CPU fp32)."""
        return self._project(self.model.text_head, embeddings)

    def encode_image(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        """PIL images or image paths -> unit ``(n, out_dim)`` embeddings (CPU fp32)."""
        encoder = self.encoder("vision")
        images = list(images)
        feats = []
        for s in range(0, len(images), batch_size):
            batch = []
            for item in images[s : s + batch_size]:
                if isinstance(item, (str, Path)):  # the readers' decoding: size limit, 16-bit scaling, clear errors
                    item = decode_image(item, str(item), str(item))
                batch.append(item)
            feats.append(encoder.encode(batch))
        if not feats:
            return torch.empty(0, self.out_dim)
        return self.transform_image(torch.cat(feats))

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> unit ``(m, out_dim)`` embeddings (CPU fp32)."""
        if isinstance(texts, str):
            texts = [texts]
        encoder = self.encoder("text")
        texts = list(texts)
        feats = [encoder.encode(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)]
        if not feats:
            return torch.empty(0, self.out_dim)
        return self.transform_text(torch.cat(feats))

    def class_embeddings(self, class_names: Sequence[str], templates=None) -> torch.Tensor:
        """``(C, out_dim)``: each class's prompts embedded, averaged, renormalised (CLIP)."""
        templates = _templates(templates)
        names = list(class_names)
        if not names:
            raise ValidationError("class_names is empty; give at least one class")
        prompts = [t.format(c) for c in names for t in templates]
        z = self.encode_text(prompts).reshape(len(names), len(templates), -1).mean(dim=1)
        return F.normalize(z, dim=-1)

    def classify(self, images: Sequence, class_names: Sequence[str], templates=None,
                 batch_size: int = 64) -> Classification:
        """Zero-shot classification of PIL images / paths among ``class_names``.

        ``templates``: None (``"a photo of a {}."``), a built-in set name
        (``"simple"``, ``"clip"``), a template file, or a list of strings with ``{}``.
        """
        classes = self.class_embeddings(class_names, templates)
        image = self.encode_image(images, batch_size)
        scores = image @ classes.T
        with torch.no_grad():
            logits = scores * self.model.logit_scale.exp().cpu() + self.model.logit_bias.cpu()
        return Classification(list(class_names), scores.numpy(), torch.sigmoid(logits).numpy())

    def __repr__(self) -> str:
        v, t = (self.info.get(m) or {} for m in ("vision", "text"))
        return (f"AlignedModel(vision={v.get('name')!r}, text={t.get('name')!r}, "
                f"heads={self.model.image_head.kind}/{self.model.text_head.kind}, out_dim={self.out_dim})")


def _templates(templates) -> list[str]:
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, str):
        templates = load_templates(templates)
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValidationError(f"every template needs one '{{}}' for the class name; got {bad or templates!r}")
    return templates


def load_aligned(path: str | Path, *, device: str = "auto", encoder_dtype: str | None = None,
                 which: str = "best", trust_remote_code: bool = False) -> AlignedModel:
    """The trained model of a run directory (SAIL training or a saved probe), or its ``aligned.json``.

    ``which``: ``"best"`` -- the weights the run kept (best held-out epoch);
    ``"latest"`` -- the last checkpoint (SAIL runs). ``device``: where the heads and
    encoders run (``auto``: CUDA, then MPS, then CPU). ``encoder_dtype``:
    ``fp32``/``fp16``/``bf16`` for the encoders (their default otherwise). ``trust_remote_code``:
    allow an encoder the run opted into remote code for (registered, pinned entries need nothing).
    """
    if which not in ("best", "latest"):
        raise ValidationError(f"which must be 'best' or 'latest', got {which!r}")
    info, file = read_model_file(path)
    run_dir = file.parent
    if which == "best":
        weights = inside(run_dir, info.get("weights", MODEL_FILE), f"{file}'s weights")
    else:
        latest = CheckpointStore(run_dir).path("latest")
        if latest is None:
            raise ValidationError(f"{run_dir} has no latest checkpoint (only training runs keep one); use which='best'")
        weights = inside(run_dir, str(Path(latest) / MODEL_FILE), "the latest checkpoint")
    if not weights.is_file():
        raise ValidationError(f"{file} names weights {weights} that do not exist; was the run directory moved "
                              f"without its checkpoints/ folder?")
    model = AlignmentModel.from_config(info["model_config"])
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as err:  # the tensors do not fit the heads aligned.json describes
        raise ValidationError(f"the weights {weights} do not fit {file} ({err}); retrain, or restore both files "
                              f"from one copy") from None
    return AlignedModel(model, info, file, device=device, encoder_dtype=encoder_dtype,
                        trust_remote_code=trust_remote_code)
