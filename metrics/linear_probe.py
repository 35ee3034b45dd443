"""Linear separability: multinomial logistic regression on frozen features.

The regularisation search runs full-batch L-BFGS along the path of L2
strengths, strongest first. Each fit starts from the previous solution
(extrapolated along log l2 when that lowers the objective) and keeps the
previous fits' curvature pairs, corrected for the change of l2 (see
``_lbfgs``). Neighbouring strengths have nearby optima and nearly the same
Hessian, so after the first fit each one needs few iterations; independent
fits (scikit-learn's search) pay for the full descent and curvature build-up
every time.

Measured (``benchmarks/metrics_speed.py --quick``: 10,000 x 256, 100 classes, the default
11-value grid; one run on a shared 2-core machine at load ~9): 44 s, 150 L-BFGS iterations,
test top-1 0.7545; scikit-learn's LogisticRegression along the same path 457 s cold (659
iterations, 0.7535) and 207 s with ``warm_start=True`` (307 iterations, 0.7540). Warm starts
alone halve scikit-learn's cost; the kept curvature pairs and the path extrapolation make
this 4.7x faster again at equal accuracy, so the custom optimiser stays.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._lbfgs import PathLBFGS
from ._validation import as_int, as_labels, as_matrix, same_cols
from .registry import register_metric

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
    """Mean cross-entropy + (l2 / 2) * ||W||^2 and its gradient, in row chunks.

    Parameters are one (d + 1, C) tensor theta: W in the first d rows, the
    (unpenalised) bias in the last.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, chunk: int):
        self.x, self.y, self.n_classes, self.chunk = x, y, n_classes, chunk

    def __call__(self, theta: torch.Tensor, l2: float) -> tuple[float, torch.Tensor]:
        w, b = theta[:-1], theta[-1]
        n = self.x.shape[0]
        loss = torch.zeros((), dtype=torch.float64, device=theta.device)
        grad = torch.zeros_like(theta)
        gw, gb = grad[:-1], grad[-1]
        for s in range(0, n, self.chunk):
            xs, ys = self.x[s : s + self.chunk], self.y[s : s + self.chunk]
            logp = torch.log_softmax(torch.addmm(b, xs, w), dim=1)
            loss -= logp.gather(1, ys[:, None]).double().sum()
            # softmax minus one-hot, in the log-probabilities' buffer
            p = logp.exp_()
            p[torch.arange(len(ys), device=p.device), ys] -= 1.0
            gw.addmm_(xs.T, p)
            gb += p.sum(0)
        grad.div_(n)
        gw.add_(w, alpha=l2)
        value = float(loss) / n + 0.5 * l2 * float(torch.dot(w.reshape(-1), w.reshape(-1)))
        return value, grad


def _history_size(numel: int) -> int:
    """L-BFGS memory: 50 pairs (the path needs a long memory), capped at ~512 MiB of float32 pairs."""
    return int(max(5, min(50, (512 << 20) // (8 * numel))))


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


@register_metric("linear_probe_top{k}", label="linear probe top-{k}", higher_is_better=True, group="separability",
                 description="linear-probe top-{k} accuracy (linear separability)",
                 reference="SAIL, Zhang et al. CVPR 2025; CLIP, Radford et al. 2021")
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

    Returns dict(top1, top5, l2, val_accuracy {l2: acc}, n_val (validation rows), n_iter {l2:
    iterations}, refit_n_iter, n_classes). top5 is None with fewer than 5 classes.

    On a small labelled set the choice of l2 is the noisiest part: validation accuracies along the
    grid often differ by one or two validation rows, so a perturbation as small as another CPU's
    rounding of the features (1e-6 relative) can move the choice -- and the test top-1 with it (by
    0.02 on 1,400 Fashion-MNIST rows, README "The embedded demo"). ``val_accuracy`` and ``n_val``
    say how close the race was (benchmarks/linear_probe_stability.py measures it).

    Full-batch float32 on the features' device; memory O(n * d + d * C), the
    logits are processed in row chunks.
    """
    xtr, xte, ytr_idx, yte_idx, n_classes = _checked_data(train_x, train_y, test_x, test_y)
    grid, seed, max_iter = _check_settings(l2_grid, val_fraction, seed, max_iter, tol)
    fit_rows, val_rows = _stratified_split(ytr_idx, val_fraction, seed)
    if len(val_rows) == 0:
        raise ValidationError(
            f"val_fraction = {val_fraction} leaves no validation rows (classes are too small: "
            f"{len(ytr_idx)} rows over {n_classes} classes); raise val_fraction or add training data"
        )

    device = xtr.device
    if standardize:
        xtr, xte = _standardise(xtr, xte)
    y_all = torch.from_numpy(ytr_idx).to(device)
    chunk = max(1, min(xtr.shape[0], (1 << 24) // n_classes))
    fit_t, val_t = torch.from_numpy(fit_rows).to(device), torch.from_numpy(val_rows).to(device)
    opt, solutions, val_acc, n_iter = _search_path(xtr[fit_t], y_all[fit_t], xtr[val_t], y_all[val_t], grid,
                                                   n_classes, chunk, max_iter, tol)
    best = max(grid, key=lambda v: (val_acc[v], v))

    # Refit on all training rows, from the search's solution; the path's
    # curvature pairs remain a good model of the (similar) Hessian.
    opt.fn = _Objective(xtr, y_all, n_classes, chunk)
    opt.set_l2(best)
    theta, _, _, refit_iter = opt.minimize(solutions[best], max_iter, tol)
    top1, top5 = _test_accuracy(theta, xte, torch.from_numpy(yte_idx).to(device), n_classes, chunk)
    return {
        "top1": top1,
        "top5": top5,
        "l2": best,
        "val_accuracy": {l2: val_acc[l2] for l2 in sorted(grid)},
        "n_val": int(len(val_rows)),
        "n_iter": {l2: n_iter[l2] for l2 in sorted(grid)},
        "refit_n_iter": refit_iter,
        "n_classes": n_classes,
    }


def _checked_data(train_x, train_y, test_x, test_y):
    """(train features, test features, train class indices, test class indices (-1: a class never seen
    in training), number of classes), each input checked with a clear error."""
    xtr = as_matrix(train_x, "train_x", min_rows=2)
    xte = as_matrix(test_x, "test_x")
    same_cols(xtr, xte, "train_x", "test_x")
    if xte.device != xtr.device:
        raise ValidationError(f"train_x and test_x must be on the same device; got {xtr.device} and {xte.device}")
    ytr = as_labels(train_y, "train_y", xtr.shape[0])
    yte = as_labels(test_y, "test_y", xte.shape[0])
    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValidationError(f"train_y must contain at least 2 classes; got only {classes.tolist()}")
    pos = np.searchsorted(classes, yte).clip(max=n_classes - 1)
    return xtr, xte, ytr_idx, np.where(classes[pos] == yte, pos, -1), n_classes


def _check_settings(l2_grid, val_fraction, seed, max_iter, tol) -> tuple[list[float], int, int]:
    """The L2 grid (strongest first), seed and iteration budget, validated with one clear error each."""
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
    return grid, seed, max_iter


def _search_path(x_fit, y_fit, x_val, y_val, grid: list[float], n_classes: int, chunk: int, max_iter: int,
                 tol: float):
    """Fit every L2 strength of ``grid`` (strongest first) on the fit rows, each warm-started from
    the previous solution (extrapolated along the smooth path in log(l2) when that is better);
    returns the optimiser, the solutions, their validation accuracies and iteration counts."""
    obj_fit = _Objective(x_fit, y_fit, n_classes, chunk)
    d, device = x_fit.shape[1], x_fit.device
    theta = torch.zeros(d + 1, n_classes, device=device)
    mask = torch.ones(d + 1, 1, device=device)
    mask[-1] = 0  # the bias is not penalised
    opt = PathLBFGS(obj_fit, mask, _history_size(theta.numel()))
    val_acc: dict[float, float] = {}
    n_iter: dict[float, int] = {}
    solutions: dict[float, torch.Tensor] = {}
    f, g = 0.0, theta
    prev_theta, prev_l2 = None, None
    for l2 in grid:
        start = None
        if opt.l2 is not None:
            # Objective and gradient at the old solution under the new strength, without an evaluation.
            sq = float(torch.dot(theta[:-1].reshape(-1), theta[:-1].reshape(-1)))
            start = (f + 0.5 * (l2 - opt.l2) * sq, g + (l2 - opt.l2) * mask * theta)
            if prev_theta is not None:
                # The solution path is smooth in log(l2): extrapolate it, keep it only if better.
                step = float(np.log(l2 / opt.l2) / np.log(opt.l2 / prev_l2))
                cand = theta + step * (theta - prev_theta)
                fc, gc = obj_fit(cand, l2)
                prev_theta, prev_l2 = theta, opt.l2
                if fc < start[0]:
                    theta, start = cand, (fc, gc)
            else:
                prev_theta, prev_l2 = theta, opt.l2
        opt.set_l2(l2)
        theta, f, g, n_iter[l2] = opt.minimize(theta, max_iter, tol, start)
        solutions[l2] = theta
        val_acc[l2] = _topk_correct(torch.addmm(theta[-1], x_val, theta[:-1]), y_val, 1) / len(y_val)
    return opt, solutions, val_acc, n_iter


def _test_accuracy(theta: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, n_classes: int,
                   chunk: int) -> tuple[float, float | None]:
    """Top-1 and top-5 accuracy (None below 5 classes) of the fitted ``[W; b]`` on the test rows."""
    w, b = theta[:-1], theta[-1]
    top1 = top5 = 0
    for s in range(0, xte.shape[0], chunk):
        logits = torch.addmm(b, xte[s : s + chunk], w)
        top1 += _topk_correct(logits, yte[s : s + chunk], 1)
        if n_classes >= 5:
            top5 += _topk_correct(logits, yte[s : s + chunk], 5)
    n_test = xte.shape[0]
    return top1 / n_test, (top5 / n_test if n_classes >= 5 else None)
