"""alignprobe: assess and learn the alignment of frozen vision and language encoders (SAIL).

The public API, exported lazily (PEP 562, `alignprobe._lazy`): `import alignprobe` is
cheap, and torch or the model libraries load only when a name needs them.

- encoders: `create_vision_encoder`, `create_text_encoder`, `list_encoders`,
  `register_encoder`, `EncoderSpec`, `EncoderRequest`;
- data and embeddings: `open_dataset`, `encode_dataset`, `EncodeOptions`, `EmbeddingCache`;
- alignment probing: `AlignmentProbe` (a scikit-learn estimator), `TrainConfig`,
  `run_pair` / `RunConfig`, `run_sweep` / `SweepConfig`;
- SAIL training: `train_pair` / `SailRunConfig`, `evaluate` (a trained run),
  `load_aligned`, `export_vision_tower`.

The subpackages `backbones`, `probe`, `metrics` and `reports` hold the rest.
"""
from __future__ import annotations

from alignprobe._lazy import lazy_exports
from alignprobe._version import __version__

_EXPORTS = {
    "create_vision_encoder": "alignprobe.backbones",
    "create_text_encoder": "alignprobe.backbones",
    "list_encoders": "alignprobe.backbones",
    "register_encoder": "alignprobe.backbones",
    "EncoderSpec": "alignprobe.backbones",
    "EncoderRequest": "alignprobe.backbones",
    "open_dataset": "alignprobe.probe.data.spec",
    "EmbeddingCache": "alignprobe.probe.embeddings.cache",
    "encode_dataset": "alignprobe.probe.embeddings.encode_job",
    "EncodeOptions": "alignprobe.config",
    "AlignmentProbe": "alignprobe.probe.training.probe",
    "TrainConfig": "alignprobe.probe.training.config",
    "RunConfig": "alignprobe.probe.pipelines.run",
    "run_pair": "alignprobe.probe.pipelines.run",
    "SweepConfig": "alignprobe.probe.pipelines.sweep",
    "run_sweep": "alignprobe.probe.pipelines.sweep",
    "SailRunConfig": "alignprobe.probe.pipelines.train",
    "train_pair": "alignprobe.probe.pipelines.train",
    "evaluate": ("alignprobe.probe.pipelines.train", "evaluate_checkpoint"),
    "load_aligned": "alignprobe.probe.pipelines.aligned",
    "export_vision_tower": "alignprobe.probe.export",
}
_SUBPACKAGES = ("backbones", "probe", "metrics", "reports")
__getattr__, _dir, __all__ = lazy_exports(__name__, _EXPORTS, subpackages=_SUBPACKAGES)
__all__ = ["__version__", *__all__]


def __dir__() -> list[str]:
    return ["__version__", *_dir()]


# transformers' AutoConfig / AutoModel learn the exported vision tower's model type when they load
import alignprobe.probe.export  # noqa: E402,F401  (stdlib only: imports no ML library)
