"""End-to-end jobs: run (one pair), sweep (a grid), train (full SAIL), evaluating and loading a trained model.

Names are exported lazily (PEP 562, `alignprobe._lazy`); the stages the jobs share
(workspace, subsets, layer groups, baselines) stay in their modules.
"""
from __future__ import annotations

from alignprobe._lazy import lazy_exports

_EXPORTS = {
    "RunConfig": ".run", "run_pair": ".run",
    "SweepConfig": ".sweep", "run_sweep": ".sweep",
    "SailRunConfig": ".train", "SailRunResult": ".train", "train_pair": ".train", "train_from_sweep": ".train",
    "evaluate_checkpoint": ".train",
    "AlignedModel": ".aligned", "load_aligned": ".aligned",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
