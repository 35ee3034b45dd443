"""A trained SAIL model as a CLIP-like model: frozen encoders + alignment heads.

    model = alignprobe.load_aligned("runs/dinov2-l__gte")
    img = model.encode_image([PIL.Image.open("cat.jpg")])       # (1, 1024), unit rows
    txt = model.encode_text(["a photo of a cat"])                # (1, 1024)
    result = model.classify(images, ["cat", "dog"], templates="simple")
    result.labels, result.scores, result.probs

The encoders are rebuilt from the names, pooling and dims recorded in the
checkpoint's ``aligned.json`` through `create_vision_encoder` /
`create_text_encoder` (loaded on first use), and checked against the heads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alignprobe.errors import ValidationError

from alignprobe.probe.training.checkpoint import ALIGNED_FILE, MODEL_FILE, CheckpointStore
from alignprobe.probe.training.heads import AlignmentModel

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


def _resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / ALIGNED_FILE
    if not path.is_file():
        raise ValidationError(
            f"{path} does not exist; pass the run directory of `alignprobe train --out DIR` (or its "
            f"{ALIGNED_FILE}); a run that has not finished its first epoch has none yet")
    return path


class AlignedModel:
    """Frozen vision and text encoders with trained alignment heads (see the module docstring)."""

    def __init__(self, model: AlignmentModel, info: dict[str, Any], path: Path | None = None, *,
                 device: str | torch.device = "auto", encoder_dtype: str | None = None):
        from alignprobe.probe.training.distributed import SINGLE, rank_device

        self.model = model
        self.info = info
        self.path = path
        self.device = rank_device(SINGLE, str(device))
        self.encoder_dtype = encoder_dtype
        self.model.to(self.device).eval()
        self._encoders: dict[str, Any] = {}

    # ---- facts
    @property
    def out_dim(self) -> int:
        return self.model.image_head.out_dim

    def encoder_info(self, modality: str) -> dict:
        entry = self.info.get(modality)
        if not entry or not entry.get("name"):
            raise ValidationError(
                f"this checkpoint does not name its {modality} encoder (it was trained on raw embeddings); "
                f"use transform_{'image' if modality == 'vision' else 'text'}(embeddings) instead")
        return entry

    def encoder(self, modality: str):
        """The frozen encoder of ``"vision"`` or ``"text"``, created on first use."""
        if modality not in self._encoders:
            from alignprobe.backbones import create_text_encoder, create_vision_encoder

            entry = self.encoder_info(modality)
            name = entry.get("local_path") or entry.get("requested") or entry["name"]
            make = create_vision_encoder if modality == "vision" else create_text_encoder
            encoder = make(name, device=str(self.device), dtype=self.encoder_dtype, pooling=entry.get("pooling"))
            head = self.model.image_head if modality == "vision" else self.model.text_head
            if encoder.dim != head.in_dim:
                raise ValidationError(
                    f"the {modality} encoder {name!r} produces {encoder.dim}-d features but the head was "
                    f"trained on {head.in_dim}-d ones; check the pooling ({entry.get('pooling')!r})")
            self._encoders[modality] = encoder
        return self._encoders[modality]

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
        from PIL import Image

        encoder = self.encoder("vision")
        images = list(images)
        feats = []
        for s in range(0, len(images), batch_size):
            batch = []
            for item in images[s : s + batch_size]:
                if isinstance(item, (str, Path)):
                    with Image.open(item) as im:
                        item = im.convert("RGB")
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
        from alignprobe.probe.data.templates import load_templates

        templates = load_templates(templates)
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValidationError(f"every template needs one '{{}}' for the class name; got {bad or templates!r}")
    return templates


def load_aligned(path: str | Path, *, device: str = "auto", encoder_dtype: str | None = None,
                 which: str = "best") -> AlignedModel:
    """The trained model of a SAIL run directory (or its ``aligned.json``).

    ``which``: ``"best"`` -- the weights the run kept (best held-out epoch);
    ``"latest"`` -- the last checkpoint. ``device``: where the heads and
    encoders run (``auto``: CUDA when available). ``encoder_dtype``:
    ``fp32``/``fp16``/``bf16`` for the encoders (their default otherwise).
    """
    from safetensors.torch import load_file

    if which not in ("best", "latest"):
        raise ValidationError(f"which must be 'best' or 'latest', got {which!r}")
    aligned = _resolve(path)
    info = json.loads(aligned.read_text())
    if not str(info.get("format", "")).startswith("alignprobe.sail/"):
        raise ValidationError(f"{aligned} is not a SAIL checkpoint (format {info.get('format')!r})")
    run_dir = aligned.parent
    if which == "best":
        weights = run_dir / info["weights"]
    else:
        latest = CheckpointStore(run_dir).path("latest")
        if latest is None:
            raise ValidationError(f"{run_dir} has no latest checkpoint")
        weights = latest / MODEL_FILE
    if not weights.is_file():
        raise ValidationError(f"{aligned} names weights {weights} that do not exist; was the run directory moved "
                              f"without its checkpoints/ folder?")
    model = AlignmentModel.from_config(info["model_config"])
    model.load_state_dict(load_file(str(weights)))
    return AlignedModel(model, info, aligned, device=device, encoder_dtype=encoder_dtype)
