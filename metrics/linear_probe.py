"""Linear separability: multinomial logistic regression on frozen features.

The regularisation search runs one full-batch L-BFGS per L2 strength, from
the strongest to the weakest, each warm-started from the previous solution:
neighbouring strengths have nearby optima, so later fits need few iterations.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._validation import as_int, as_labels, as_matrix, same_cols

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, -1, 11))


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (fit, val), taking ~val_fraction of each class for val.

    Every class keeps at least one fitting row, so a class with a single
    example is never only in validation (where it could not be learned).
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]  # grouped by class, random within
    classes, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    rank = np.arange(len(y)) - np.repeat(starts, counts)
    n_val = np.minimum(np.round(counts * val_fraction).astype(np.int64), counts - 1)
    is_val = rank < np.repeat(n_val, counts)
    return np.sort(order[~is_val]), np.sort(order[is_val])


class _Objective:
    """Mean cross-entropy + (l2 / 2) * ||W||^2 (bias unpenalised) and its gradient, in row chunks."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, chunk: int):
        self.x, self.y, self.n_classes, self.chunk = x, y, n_classes, chunk

    def __call__(self, w: torch.Tensor, b: torch.Tensor, l2: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        n = self.x.shape[0]
        loss = torch.zeros((), dtype=torch.float64, device=w.device)
        gw = torch.zeros_like(w)
        gb = torch.zeros_like(b)
        for s in range(0, n, self.chunk):
            xs, ys = self.x[s : s + self.chunk], self.y[s : s + self.chunk]
            logp = torch.log_softmax(torch.addmm(b, xs, w), dim=1)
            loss -= logp.gather(1, ys[:, None]).double().sum()
            # softmax minus one-hot, in the log-probabilities' buffer
            p = logp.exp_()
            p[torch.arange(len(ys), device=p.device), ys] -= 1.0
            gw.addmm_(xs.T, p)
            gb += p.sum(0)
        gw.div_(n).add_(w, alpha=l2)
        gb.div_(n)
        value = float(loss) / n + 0.5 * l2 * float((w.double() ** 2).sum())
        return value, gw, gb


def _fit(
    obj: _Objective, w: torch.Tensor, b: torch.Tensor, l2: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    w = w.clone().requires_grad_(False)
    b = b.clone().requires_grad_(False)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-10,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> float:
        value, gw, gb = obj(w, b, l2)
        w.grad, b.grad = gw, gb
        return value

    opt.step(closure)
    return w, b, int(opt.state[opt._params[0]].get("n_iter", 0))


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay 0
    return [(t - mean) / std for t in (train, *others)]


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    valid = y >= 0
    true = logits.gather(1, y.clamp(min=0)[:, None])
    # Ties count against the true class.
    rank = (logits >= true).sum(1) - 1
    return int(((rank < k) & valid).sum())


def linear_probe_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    standardize: bool = True,
) -> dict[str, Any]:
    """Linear-probe accuracy: L2-regularised multinomial logistic regression on frozen features.

    The measure of linear separability in SAIL (Zhang et al., CVPR 2025) and
    the standard linear evaluation of self-supervised features (e.g. CLIP,
    Radford et al. 2021, sweeping the L2 strength on a validation split).

    Objective per L2 strength l2 (bias not penalised)::

        mean_i CE(softmax(W^T x_i + b), y_i) + (l2 / 2) * ||W||_F^2

    i.e. scikit-learn's LogisticRegression with C = 1 / (l2 * n_fit).
    Procedure: carve a stratified validation split (``val_fraction`` of each
    class) from the training rows; fit every l2 in ``l2_grid`` on the rest,
    strongest first, warm-starting each fit from the previous one; choose the
    l2 with the best validation accuracy (ties go to the stronger l2); refit on
    all training rows with it; report test accuracy. Test rows are used only
    for that final report.

    Args:
        train_x: (n_train, d) features.  train_y: (n_train,) integer labels.
        test_x: (n_test, d) features.    test_y: (n_test,) labels; classes
            never seen in training count as errors.
        l2_grid: L2 strengths (> 0) to search.
        val_fraction: share of each class held out for the search, in (0, 1).
        seed: seed of the validation split (the fits are deterministic).
        max_iter: L-BFGS iterations per fit.
        tol: stop a fit when max |gradient| <= tol (scikit-learn's default 1e-4).
        standardize: z-score features with the training set's mean and std
            (label-free; it only conditions the optimisation).

    Returns dict(top1, top5, l2, val_accuracy {l2: acc}, n_iter {l2: iterations},
    refit_n_iter, n_classes). top5 is None with fewer than 5 classes.
    Full-batch float32 on the features' device; memory O(n * d + d * C), the
    logits are processed in row chunks.
    """
    xtr = as_matrix(train_x, "train_x", min_rows=2)
    xte = as_matrix(test_x, "test_x")
    same_cols(xtr, xte, "train_x", "test_x")
    if xte.device != xtr.device:
        raise ValidationError(f"train_x and test_x must be on the same device; got {xtr.device} and {xte.device}")
    ytr = as_labels(train_y, "train_y", xtr.shape[0])
    yte = as_labels(test_y, "test_y", xte.shape[0])
    try:
        grid = sorted({float(v) for v in l2_grid}, reverse=True)
    except (TypeError, ValueError):
        raise ValidationError(f"l2_grid must be a sequence of positive numbers; got {l2_grid!r}") from None
    if not grid or any(not np.isfinite(v) or v <= 0 for v in grid):
        raise ValidationError(f"l2_grid must hold at least one positive finite number; got {list(l2_grid)!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValidationError(f"val_fraction must be a number in (0, 1); got {val_fraction!r}")
    seed = as_int(seed, "seed", low=0)
    max_iter = as_int(max_iter, "max_iter", low=1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValidationError(f"tol must be a positive number; got {tol!r}")

    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValidationError(f"train_y must contain at least 2 classes; got only {classes.tolist()}")
    fit_rows, val_rows = _stratified_split(ytr_idx, val_fraction, seed)
    if len(val_rows) == 0:
        raise ValidationError(
            f"val_fraction = {val_fraction} leaves no validation rows (classes are too small: "
            f"{len(ytr)} rows over {n_classes} classes); raise val_fraction or add training data"
        )
    pos = np.searchsorted(classes, yte).clip(max=n_classes - 1)
    yte_idx = np.where(classes[pos] == yte, pos, -1)

    device = xtr.device
    if standardize:
        xtr, xte = _standardise(xtr, xte)
    y_all = torch.from_numpy(ytr_idx).to(device)
    fit_t = torch.from_numpy(fit_rows).to(device)
    val_t = torch.from_numpy(val_rows).to(device)
    chunk = max(1, min(xtr.shape[0], (1 << 24) // n_classes))
    obj_fit = _Objective(xtr[fit_t], y_all[fit_t], n_classes, chunk)
    x_val, y_val = xtr[val_t], y_all[val_t]

    w = torch.zeros(xtr.shape[1], n_classes, device=device)
    b = torch.zeros(n_classes, device=device)
    val_acc: dict[float, float] = {}
    n_iter: dict[float, int] = {}
    solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for l2 in grid:
        w, b, it = _fit(obj_fit, w, b, l2, max_iter, tol)
        solutions[l2] = (w, b)
        n_iter[l2] = it
        val_acc[l2] = _topk_correct(torch.addmm(b, x_val, w), y_val, 1) / len(val_rows)
    best = max(grid, key=lambda v: (val_acc[v], v))
    del obj_fit

    obj_all = _Objective(xtr, y_all, n_classes, chunk)
    w, b, refit_iter = _fit(obj_all, *solutions[best], best, max_iter, tol)
    yte_t = torch.from_numpy(yte_idx).to(device)
    top1 = top5 = 0
    for s in range(0, xte.shape[0], chunk):
        logits = torch.addmm(b, xte[s : s + chunk], w)
        top1 += _topk_correct(logits, yte_t[s : s + chunk], 1)
        if n_classes >= 5:
            top5 += _topk_correct(logits, yte_t[s : s + chunk], 5)
    n_test = xte.shape[0]
    return {
        "top1": top1 / n_test,
        "top5": top5 / n_test if n_classes >= 5 else None,
        "l2": best,
        "val_accuracy": {l2: val_acc[l2] for l2 in sorted(grid)},
        "n_iter": {l2: n_iter[l2] for l2 in sorted(grid)},
        "refit_n_iter": refit_iter,
        "n_classes": n_classes,
    }
