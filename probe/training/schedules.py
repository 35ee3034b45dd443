"""Learning-rate schedules: linear warmup, then cosine decay or a constant rate."""
from __future__ import annotations

import math

from alignprobe.errors import ValidationError

SCHEDULES = ("cosine", "constant")


def warmup_steps_for(warmup: int | float, total_steps: int) -> int:
    """Resolve a warmup given as steps (int) or as a fraction of all steps (float in [0, 1])."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        raise ValidationError(f"warmup must be an int (steps) or a float in [0, 1] (fraction), got {warmup!r}")
    if isinstance(warmup, float):
        if not 0.0 <= warmup <= 1.0:
            raise ValidationError(f"a float warmup is a fraction of all steps and must lie in [0, 1], got {warmup}")
        return int(round(warmup * total_steps))
    if warmup < 0:
        raise ValidationError(f"warmup steps must be >= 0, got {warmup}")
    return min(warmup, total_steps)


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr: float = 0.0,
) -> float:
    """Learning rate for the 0-based optimizer ``step`` out of ``total_steps``.

    Warmup rises linearly to ``base_lr`` at step ``warmup_steps - 1`` (never 0,
    so the first step moves the weights); then ``cosine`` decays towards
    ``min_lr``, or ``constant`` stays at ``base_lr``.

    The cosine follows the SAIL reference (lezhang7/SAIL ``train/scheduler.py``,
    ``cosine_lr``): ``e = step - warmup``, ``es = total - warmup``,
    ``lr = 0.5 * (1 + cos(pi * e / es)) * base_lr``. Its end point is
    ``total - warmup``, one past the last step, so the last step runs at a small
    positive rate, not at ``min_lr`` itself. (``min_lr`` > 0 is an addition of
    ours; at the default 0 the formula is the reference's.)
    """
    if schedule not in SCHEDULES:
        raise ValidationError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
