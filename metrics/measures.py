"""The registry of representational-similarity measures: each declared once, with its metadata.

A measure is a pure function ``fn(x, y, **params) -> float`` on paired rows
(x: (n, d_x), y: (n, d_y), same samples in the same order), registered with
``@register_measure`` and described by a frozen ``Measure``: its bounds, whether
higher is better, the paper that defines it, and the invariances it has
(transformations of either side's features that leave the score unchanged):

- ``"orthogonal"``: x -> x R for any orthogonal R (d x d);
- ``"isotropic_scaling"``: x -> c x, c > 0;
- ``"permutation"``: a permutation of the feature columns (a special orthogonal R);
- ``"translation"``: x -> x + t (a constant row added to every sample);
- ``"invertible_linear"``: x -> x M for any invertible M.

Every measure here is invariant to relabelling the samples (the same
permutation of the rows of x and y), which is what the permutation
calibration (``calibration.calibrate``, Gröger, Wen & Brbić, ICML 2026)
relies on. So that 200 permutations at n = 1,024 take seconds, a measure may
also register a *permutation scorer*: what depends on one side only (Gram
matrices, neighbour lists, orthonormal bases, rank matrices) is computed once
per side (``Side``) and each permutation only re-indexes y's share. The
scorer and the measure function must agree (tested for every measure).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._neighbors import intersection_entries, intersection_size, unit_rows
from ._validation import as_matrix
from .similarity import (
    RBF_MAX_SAMPLES,
    center_columns,
    rbf_kernel,
    sparse_hsic_unbiased,
    top_subspace,
    cka,
    cknna,
    cycle_knn,
    knn_jaccard,
    knn_lists,
    linear_r2,
    mean_cca,
    mutual_knn,
    orthonormal_basis,
    procrustes_factor,
    procrustes_similarity,
    pwcca,
    rsa,
    rsa_ranks,
    rv_coefficient,
    svcca,
)

INVARIANCES = frozenset({"orthogonal", "isotropic_scaling", "permutation", "translation", "invertible_linear"})

#: fast(side_x, side_y, perm, **params) -> score of (x, y[perm]); perm None is the identity.
PermutationScorer = Callable[..., float]


@dataclass(frozen=True)
class Measure:
    """A registered similarity measure and what is known about it.

    Attributes:
        name: registry key (also the record column, e.g. ``cka``, ``cka_calibrated``).
        fn: ``fn(x, y, **params) -> float``.
        bounds: (lo, hi); hi is None for a measure without an upper bound.
        higher_is_better: True for similarities.
        reference: the paper (and code) that defines it.
        invariances: subset of ``INVARIANCES`` that the default parameters have.
        description: one line for tables and ``--help``.
        symmetric: whether fn(x, y) == fn(y, x).
        scorer: optional fast permutation scorer (see the module docstring).
    """

    name: str
    fn: Callable[..., float]
    bounds: tuple[float, float | None]
    higher_is_better: bool
    reference: str
    invariances: frozenset[str]
    description: str
    symmetric: bool = True
    scorer: PermutationScorer | None = field(default=None, repr=False, compare=False)

    @property
    def upper(self) -> float | None:
        return self.bounds[1]

    def __call__(self, x: Any, y: Any, **params: Any) -> float:
        return float(self.fn(x, y, **params))

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The keyword parameters of ``fn`` with their defaults, updated by ``overrides`` (unknown names refused)."""
        sig = inspect.signature(self.fn)
        names = list(sig.parameters)[2:]  # after x and y
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValidationError(
                f"measure {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(names) or '(none)'}"
            )
        out = {p: sig.parameters[p].default for p in names if sig.parameters[p].default is not inspect.Parameter.empty}
        out.update(overrides)
        return out


_REGISTRY: dict[str, Measure] = {}


def register_measure(
    name: str,
    *,
    bounds: tuple[float, float | None],
    reference: str,
    invariances: set[str] | frozenset[str],
    description: str,
    higher_is_better: bool = True,
    symmetric: bool = True,
    scorer: PermutationScorer | None = None,
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator: register ``fn(x, y, **params) -> float`` under ``name`` (a second use of a name is refused)."""
    unknown = set(invariances) - INVARIANCES
    if unknown:
        raise ValueError(f"unknown invariances {sorted(unknown)}; known: {sorted(INVARIANCES)}")

    def deco(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _REGISTRY:
            raise ValueError(f"a measure named {name!r} is already registered")
        _REGISTRY[name] = Measure(
            name=name, fn=fn, bounds=bounds, higher_is_better=higher_is_better, reference=reference,
            invariances=frozenset(invariances), description=description, symmetric=symmetric, scorer=scorer,
        )
        return fn

    return deco


def list_measures() -> list[str]:
    """Names of the registered measures, in registration order."""
    return list(_REGISTRY)


def get_measure(name: str | Measure) -> Measure:
    """The registered ``Measure`` called ``name``; an unknown name raises with the closest names."""
    if isinstance(name, Measure):
        return name
    if not isinstance(name, str):
        raise ValidationError(f"measure must be a registered name or a callable; got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        key = name.strip().lower().replace("-", "_")
        if key in _REGISTRY:
            return _REGISTRY[key]
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValidationError(
            f"unknown similarity measure {name!r}.{hint} Known measures: {', '.join(_REGISTRY)}"
        ) from None


# ---- one side's permutation-invariant precomputations ----


class Side:
    """One representation's features and what the permutation scorers derive from them, computed once.

    Everything cached here is a property of the rows as a set (a Gram matrix,
    neighbour lists, a basis); permuting the rows permutes it, never recomputes it.
    """

    def __init__(self, x: Any, name: str = "x"):
        self.name = name
        self.x64 = as_matrix(x, name, dtype=torch.float64, min_rows=2).cpu()
        self.n = self.x64.shape[0]
        self._cache: dict[tuple, Any] = {}

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @cached_property
    def x32(self) -> torch.Tensor:
        return self.x64.to(torch.float32)

    @cached_property
    def centered(self) -> torch.Tensor:
        return center_columns(self.x64)

    def knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) (n, k) of cosine nearest neighbours, exactly as ``mutual_knn`` finds them."""
        return self.get(("knn", k), lambda: knn_lists(self.x32, k, self.name))

    def basis(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.get(("basis",), lambda: orthonormal_basis(self.centered, self.name))

    def kernel(self, kind: str, sigma: float | None = None, normalize: bool = True) -> torch.Tensor:
        """(n, n) kernel matrix as ``cka`` builds it: linear on centred (optionally unit-row) features, or rbf.

        Not cached: the HSIC statistics derived from it are, and keeping both would double the memory.
        """
        x = unit_rows(self.x64, self.name) if normalize else self.x64
        if kind == "rbf":
            return rbf_kernel(x, sigma)
        c = center_columns(x)
        return c @ c.T


def _check_gram_size(n: int, what: str) -> None:
    if n > RBF_MAX_SAMPLES:
        raise ValidationError(
            f"{what}: the permutation scorer keeps n x n matrices; n must be <= {RBF_MAX_SAMPLES}, got {n}. "
            "Calibrate on a subsample of paired rows (metrics.similarity_sample)."
        )


def _permute2(m: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """m[perm][:, perm]: the same matrix for samples relabelled by perm."""
    if perm is None:
        return m
    return m.index_select(0, perm).index_select(1, perm)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum(a * b), accumulated in float64."""
    return float(torch.sum(a * b, dtype=torch.float64))


# The n x n matrices that permutations re-index are kept in float32: re-indexing a 1,024 x 1,024
# float64 matrix costs ~10x more than a float32 one (it falls out of cache), and the products are
# summed in float64, so a score moves by ~1e-7 relative, the same for observed and permuted scores.
_GATHER_DTYPE = torch.float32


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype)
    return inv


def _permuted_knn(sy: Side, k: int, perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour lists of y[perm]: row i of y[perm] is y[perm[i]], whose neighbours j are rows inv[j] of y[perm]."""
    vals, idx = sy.knn(k)
    if perm is None:
        return vals, idx
    return vals[perm], _inverse(perm)[idx[perm]]


# ---- permutation scorers ----


def _fast_mutual_knn(sx: Side, sy: Side, perm: torch.Tensor | None, *, k: int) -> float:
    _, ix = sx.knn(k)
    _, iy = _permuted_knn(sy, k, perm)
    return int(intersection_size(ix, iy).sum()) / (sx.n * k)


def _fast_knn_jaccard(sx: Side, sy: Side, perm: torch.Tensor | None, *, k: int) -> float:
    _, ix = sx.knn(k)
    _, iy = _permuted_knn(sy, k, perm)
    m = intersection_size(ix, iy).double()
    return float((m / (2 * k - m)).mean())


def _fast_cycle_knn(sx: Side, sy: Side, perm: torch.Tensor | None, *, k: int) -> float:
    n = sx.n

    def adjacency() -> torch.Tensor:
        _, ix = sx.knn(k)
        adj = torch.zeros(n, n, dtype=torch.bool)  # adj[j, i]: i is among j's k nearest neighbours in x
        adj[torch.arange(n).repeat_interleave(k), ix.reshape(-1)] = True
        return adj

    adj = sx.get(("knn_adjacency", k), adjacency)
    _, iy = _permuted_knn(sy, k, perm)
    hit = adj[iy, torch.arange(n).view(n, 1)].any(dim=1)
    return float(hit.double().mean())


def _cknna_self(s: Side, k: int) -> float:
    def make() -> float:
        vals, idx = s.knn(k)
        rows = torch.arange(s.n).repeat_interleave(k).numpy()
        v = vals.reshape(-1).double().numpy()
        return sparse_hsic_unbiased(s.n, rows, idx.reshape(-1).numpy(), v, v)

    return s.get(("cknna_self", k), make)


def _fast_cknna(sx: Side, sy: Side, perm: torch.Tensor | None, *, k: int) -> float:
    vx, ix = sx.knn(k)
    vy, iy = _permuted_knn(sy, k, perm)
    row, col, kv, lv = intersection_entries(ix, vx, iy, vy)
    h_ab = (
        sparse_hsic_unbiased(sx.n, row.numpy(), col.numpy(), kv.double().numpy(), lv.double().numpy())
        if row.numel() else 0.0
    )
    h_aa, h_bb = _cknna_self(sx, k), _cknna_self(sy, k)
    if not (h_aa > 0 and h_bb > 0):
        return float(cknna(sx.x32, sy.x32 if perm is None else sy.x32[perm], k=k))  # raises the clear error
    return h_ab / float(np.sqrt(h_aa * h_bb))


class _KernelStats:
    """What HSIC needs of one kernel K for both estimators, computed once."""

    def __init__(self, K: torch.Tensor, unbiased: bool):
        n = K.shape[0]
        self.n, self.unbiased = n, unbiased
        if unbiased:
            mat = K.clone().fill_diagonal_(0)  # K~
            self.rows = mat.sum(1)
            self.total = float(mat.sum())
        else:
            kc = K - K.mean(0, keepdim=True)
            mat = kc - kc.mean(1, keepdim=True)  # H K H
        self.mat = mat.to(_GATHER_DTYPE)
        self.self_hsic = self.hsic(self, None)

    def hsic(self, other: "_KernelStats", perm: torch.Tensor | None) -> float:
        n = self.n
        trace = _dot(self.mat, _permute2(other.mat, perm))
        if not self.unbiased:
            return trace
        rows_o = other.rows if perm is None else other.rows[perm]
        cross = float(self.rows @ rows_o)
        return (trace + self.total * other.total / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _kernel_scorer(kernel: str, unbiased: bool, normalize_default: bool) -> PermutationScorer:
    def fast(sx: Side, sy: Side, perm: torch.Tensor | None, *, sigma: float | None = None,
             normalize: bool = normalize_default, **_: Any) -> float:
        _check_gram_size(sx.n, "CKA")
        stats = [
            s.get(("hsic_stats", kernel, sigma, normalize, unbiased),
                  lambda s=s: _KernelStats(s.kernel(kernel, sigma, normalize), unbiased))
            for s in (sx, sy)
        ]
        h_aa, h_bb = stats[0].self_hsic, stats[1].self_hsic
        if not (h_aa > 0 and h_bb > 0):
            raise ValidationError(
                f"CKA is undefined: HSIC(x, x) = {h_aa:.3g}, HSIC(y, y) = {h_bb:.3g} (both must be > 0); "
                "a side is constant across samples or n is too small for the unbiased estimator"
            )
        return stats[0].hsic(stats[1], perm) / float(np.sqrt(h_aa * h_bb))

    return fast


def _fast_svcca(sx: Side, sy: Side, perm: torch.Tensor | None, *, dim: int) -> float:
    def left(s: Side) -> torch.Tensor:
        def make() -> torch.Tensor:
            c = s.centered
            std = c.std(dim=0, keepdim=True)
            z = c / torch.where(std > 0, std, torch.ones_like(std))
            v, sv = top_subspace(z, dim, s.name)
            return (z @ v) / sv

        return s.get(("svcca_u", dim), make)

    uy = left(sy)
    if perm is not None:
        uy = uy[perm]
    return float(torch.linalg.svdvals(left(sx).T @ uy).clamp(max=1.0).mean())


def _basis32(s: Side) -> torch.Tensor:
    return s.get(("basis32",), lambda: s.basis()[0].to(torch.float32))


def _cca_matrix(sx: Side, sy: Side, perm: torch.Tensor | None) -> torch.Tensor:
    """Q_x^T Q_y[perm] in float32: half the time of float64 at d = 768; singular values keep ~1e-7 absolute error."""
    qy = _basis32(sy)
    return _basis32(sx).T @ (qy if perm is None else qy[perm])


def _fast_mean_cca(sx: Side, sy: Side, perm: torch.Tensor | None) -> float:
    return float(torch.linalg.svdvals(_cca_matrix(sx, sy, perm)).double().clamp(max=1.0).mean())


def _fast_pwcca(sx: Side, sy: Side, perm: torch.Tensor | None) -> float:
    # float64 here: the weights use singular vectors, which float32 moves by ~1e-6 where correlations are close
    qx, qy = sx.basis()[0], sy.basis()[0]
    u, rho, vh = torch.linalg.svd(qx.T @ (qy if perm is None else qy[perm]), full_matrices=False)
    rho = rho.clamp(max=1.0)
    # <h_i, x_j> for variates h = Q u: u^T (Q^T X), where Q^T X is fixed under row permutations
    if sx.x64.shape[1] <= sy.x64.shape[1]:
        coords = sx.get(("pw_coords",), lambda: sx.basis()[0].T @ sx.centered)
        alpha = (u.T @ coords).abs().sum(dim=1)
    else:
        coords = sy.get(("pw_coords",), lambda: sy.basis()[0].T @ sy.centered)
        alpha = (vh @ coords).abs().sum(dim=1)
    return float((alpha * rho).sum() / alpha.sum())


def _fast_procrustes(sx: Side, sy: Side, perm: torch.Tensor | None) -> float:
    px = sx.get(("procrustes",), lambda: procrustes_factor(sx.centered, sx.name).to(torch.float32))
    py = sy.get(("procrustes",), lambda: procrustes_factor(sy.centered, sy.name).to(torch.float32))
    return float(torch.linalg.svdvals(px.T @ (py if perm is None else py[perm])).double().sum())


def _fast_rsa(sx: Side, sy: Side, perm: torch.Tensor | None, *, distance: str = "euclidean") -> float:
    _check_gram_size(sx.n, "rsa")
    zx = sx.get(("rsa", distance), lambda: rsa_ranks(sx.x64, distance).to(_GATHER_DTYPE))
    zy = sy.get(("rsa", distance), lambda: rsa_ranks(sy.x64, distance).to(_GATHER_DTYPE))
    return _dot(zx, _permute2(zy, perm)) / (sx.n * (sx.n - 1))


def _r2_parts(s: Side) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(projector Q Q^T, Gram X_c X_c^T, ||X_c||_F^2) of one side, all (n, n)."""

    def make() -> tuple[torch.Tensor, torch.Tensor, float]:
        q, _, _ = s.basis()
        c = s.centered
        return (q @ q.T).to(_GATHER_DTYPE), (c @ c.T).to(_GATHER_DTYPE), float((c * c).sum())

    return s.get(("r2_parts",), make)


def _fast_r2(predictor_is_x: bool) -> PermutationScorer:
    def fast(sx: Side, sy: Side, perm: torch.Tensor | None) -> float:
        _check_gram_size(sx.n, "linear_r2")
        px, kx, tx = _r2_parts(sx)
        py, ky, ty = _r2_parts(sy)
        # R²(a -> b) = tr(P_a B B^T) / tr(B B^T); relabelling y's samples permutes its matrices
        if predictor_is_x:
            if not ty > 0:
                raise ValidationError("linear_r2: y is constant across samples; R² is undefined")
            return _dot(px, _permute2(ky, perm)) / ty
        if not tx > 0:
            raise ValidationError("linear_r2: x is constant across samples; R² is undefined")
        return _dot(kx, _permute2(py, perm)) / tx

    return fast


# ---- the registered measures ----

_ANGULAR = {"orthogonal", "isotropic_scaling", "permutation"}
_EUCLIDEAN = {"orthogonal", "isotropic_scaling", "permutation", "translation"}
_PRH = "Huh, Cheung, Wang, Isola, The Platonic Representation Hypothesis, ICML 2024 (platonic-rep metrics.py)"
_CKA = "Kornblith, Norouzi, Lee, Hinton, Similarity of Neural Network Representations Revisited, ICML 2019"


@register_measure("mutual_knn", bounds=(0.0, 1.0), reference=_PRH, invariances=_ANGULAR,
                  description="mean overlap of the k nearest cosine neighbours, divided by k",
                  scorer=_fast_mutual_knn)
def _mutual_knn(x: Any, y: Any, k: int = 10) -> float:
    return mutual_knn(x, y, k)


@register_measure("knn_jaccard", bounds=(0.0, 1.0), reference=_PRH + "; Jaccard index of the kNN sets",
                  invariances=_ANGULAR, description="mean Jaccard index of the k nearest cosine neighbour sets",
                  scorer=_fast_knn_jaccard)
def _knn_jaccard(x: Any, y: Any, k: int = 10) -> float:
    return knn_jaccard(x, y, k)


@register_measure("cycle_knn", bounds=(0.0, 1.0), reference=_PRH + " (cycle_knn)", invariances=_ANGULAR,
                  description="fraction of samples that a y-neighbour's x-neighbours lead back to",
                  symmetric=False, scorer=_fast_cycle_knn)
def _cycle_knn(x: Any, y: Any, k: int = 10) -> float:
    return cycle_knn(x, y, k)


@register_measure("cknna", bounds=(-1.0, 1.0), reference=_PRH + " (Sec. A.2)", invariances=_ANGULAR,
                  description="unbiased CKA restricted to pairs that are k-nearest neighbours on both sides",
                  scorer=_fast_cknna)
def _cknna(x: Any, y: Any, k: int = 10) -> float:
    return cknna(x, y, k)


@register_measure("cka", bounds=(0.0, 1.0), reference=_CKA + "; rows L2-normalised as in platonic-rep",
                  invariances=_ANGULAR, description="linear CKA, biased HSIC, unit-norm rows",
                  scorer=_kernel_scorer("linear", False, True))
def _cka(x: Any, y: Any, normalize: bool = True) -> float:
    return cka(x, y, kernel="linear", unbiased=False, normalize=normalize)


@register_measure("cka_unbiased", bounds=(-1.0, 1.0),
                  reference=_CKA + "; unbiased HSIC of Song et al., JMLR 2012, as in platonic-rep",
                  invariances=_ANGULAR, description="linear CKA, unbiased HSIC, unit-norm rows",
                  scorer=_kernel_scorer("linear", True, True))
def _cka_unbiased(x: Any, y: Any, normalize: bool = True) -> float:
    return cka(x, y, kernel="linear", unbiased=True, normalize=normalize)


@register_measure("cka_rbf", bounds=(0.0, 1.0), reference=_CKA + " (RBF kernel, median-distance bandwidth)",
                  invariances=_ANGULAR, description="RBF-kernel CKA, biased HSIC, unit-norm rows",
                  scorer=_kernel_scorer("rbf", False, True))
def _cka_rbf(x: Any, y: Any, sigma: float | None = None, normalize: bool = True) -> float:
    return cka(x, y, kernel="rbf", unbiased=False, sigma=sigma, normalize=normalize)


@register_measure("cka_rbf_unbiased", bounds=(-1.0, 1.0), reference=_CKA + " (RBF kernel); Song et al. 2012",
                  invariances=_ANGULAR, description="RBF-kernel CKA, unbiased HSIC, unit-norm rows",
                  scorer=_kernel_scorer("rbf", True, True))
def _cka_rbf_unbiased(x: Any, y: Any, sigma: float | None = None, normalize: bool = True) -> float:
    return cka(x, y, kernel="rbf", unbiased=True, sigma=sigma, normalize=normalize)


@register_measure("rv_coefficient", bounds=(0.0, 1.0),
                  reference="Robert & Escoufier, Applied Statistics 1976 (= linear CKA without row normalisation)",
                  invariances=_EUCLIDEAN, description="RV coefficient of the centred features",
                  scorer=_kernel_scorer("linear", False, False))
def _rv(x: Any, y: Any) -> float:
    return rv_coefficient(x, y)


@register_measure("svcca", bounds=(0.0, 1.0),
                  reference="Raghu, Gilmer, Yosinski, Sohl-Dickstein, SVCCA, NeurIPS 2017",
                  invariances={"isotropic_scaling", "permutation", "translation"},
                  description="mean canonical correlation of each side's top-dim standardised singular directions",
                  scorer=_fast_svcca)
def _svcca(x: Any, y: Any, dim: int = 10) -> float:
    return svcca(x, y, dim)


@register_measure("mean_cca", bounds=(0.0, 1.0), reference="Hotelling 1936; " + _CKA + " (rho-bar CCA)",
                  invariances=_EUCLIDEAN | {"invertible_linear"},
                  description="mean canonical correlation (exact, no ridge; needs n >> d_x + d_y)",
                  scorer=_fast_mean_cca)
def _mean_cca(x: Any, y: Any) -> float:
    return mean_cca(x, y)


@register_measure("pwcca", bounds=(0.0, 1.0),
                  reference="Morcos, Raghu, Bengio, Insights on representational similarity ... "
                            "with canonical correlation, NeurIPS 2018",
                  invariances={"isotropic_scaling", "permutation", "translation"},
                  description="projection-weighted mean canonical correlation (needs n >> d_x + d_y)",
                  symmetric=False, scorer=_fast_pwcca)
def _pwcca(x: Any, y: Any) -> float:
    return pwcca(x, y)


@register_measure("procrustes", bounds=(0.0, 1.0),
                  reference="Ding, Denain, Steinhardt, Grounding Representation Similarity, NeurIPS 2021; "
                            "Williams et al., Generalized Shape Metrics, NeurIPS 2021",
                  invariances=_EUCLIDEAN,
                  description="nuclear norm of X^T Y for centred, unit-Frobenius X, Y (1 - Procrustes distance² / 2)",
                  scorer=_fast_procrustes)
def _procrustes(x: Any, y: Any) -> float:
    return procrustes_similarity(x, y)


@register_measure("rsa", bounds=(-1.0, 1.0),
                  reference="Kriegeskorte, Mur, Bandettini, Representational similarity analysis, "
                            "Front. Syst. Neurosci. 2008 (Euclidean RDMs as in Gröger et al. 2026)",
                  invariances=_EUCLIDEAN,
                  description="Spearman correlation of the two Euclidean distance matrices' upper triangles",
                  scorer=_fast_rsa)
def _rsa(x: Any, y: Any, distance: str = "euclidean") -> float:
    return rsa(x, y, distance)


@register_measure("linear_r2_xy", bounds=(0.0, 1.0),
                  reference="least-squares linear regression R² (pseudo-inverse, no ridge), x predicts y",
                  invariances=_EUCLIDEAN, description="in-sample R² of y regressed on x (needs n >> d_x)",
                  symmetric=False, scorer=_fast_r2(True))
def _r2_xy(x: Any, y: Any) -> float:
    return linear_r2(x, y)


@register_measure("linear_r2_yx", bounds=(0.0, 1.0),
                  reference="least-squares linear regression R² (pseudo-inverse, no ridge), y predicts x",
                  invariances=_EUCLIDEAN, description="in-sample R² of x regressed on y (needs n >> d_y)",
                  symmetric=False, scorer=_fast_r2(False))
def _r2_yx(x: Any, y: Any) -> float:
    return linear_r2(y, x)


def permutation_scorer(
    measure: str | Measure | Callable[..., float], x: Any, y: Any, **params: Any
) -> tuple[Callable[[np.ndarray | None], float], Side, Side]:
    """A function ``score(perm)`` = measure(x, y[perm], **params) (perm None = identity), plus the two Sides.

    Registered measures with a fast scorer precompute each side once; other
    measures and plain callables call ``fn(x, y[perm])`` each time.
    """
    sx, sy = Side(x, "x"), Side(y, "y")
    return bind_scorer(measure, sx, sy, **params), sx, sy


def bind_scorer(measure: str | Measure | Callable[..., float], sx: Side, sy: Side,
                **params: Any) -> Callable[[np.ndarray | None], float]:
    """``score(perm)`` for prepared sides (Sides are shareable across measures and layer pairs)."""
    if sx.n != sy.n:
        raise ValidationError(
            f"x and y must have the same number of rows (one per sample, paired); got {sx.n} and {sy.n}"
        )
    if callable(measure) and not isinstance(measure, (str, Measure)):
        fn, fast = measure, None
    else:
        m = get_measure(measure)
        params = m.params(**params)
        fn, fast = m.fn, m.scorer

    if fast is not None:
        # One call of the measure itself validates the data and parameters with its own messages
        # (k <= n - 1, n >= 4 for unbiased HSIC, dim <= rank, ...); the scorer assumes they hold.
        fn(sx.x64.numpy(), sy.x64.numpy(), **params)

        def score(perm: np.ndarray | None) -> float:
            p = None if perm is None else torch.as_tensor(np.asarray(perm), dtype=torch.int64)
            return float(fast(sx, sy, p, **params))
    else:
        x_in, y_in = sx.x64.numpy(), sy.x64.numpy()

        def score(perm: np.ndarray | None) -> float:
            return float(fn(x_in, y_in if perm is None else y_in[np.asarray(perm)], **params))

    return score

