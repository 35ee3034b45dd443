"""Training-free image-text alignment baselines: the floor that geometry alone reaches.

Each baseline is fitted in closed form on training pairs (x_train: (n, d_x)
image features, y_train: (n, d_y) text features, row i of each describing the
same pair) and maps image and text features into one shared space, where they
are compared by cosine similarity, exactly like the probe's aligned
embeddings, so the same zero-shot and retrieval code scores both:

- ``procrustes``: orthogonal Procrustes (Schönemann 1966): centre, optionally
  whiten, then the orthogonal map that best sends images onto their captions;
- ``ridge``: ridge least squares from image to text space;
- ``cca``: the top-k canonical directions of both sides (Hotelling 1936);
- ``asif``: ASIF relative representations (Norelli, Fumero, Maiorca, Rodolà,
  Locatello, Ruggieri; NeurIPS 2023): a sample is described by its
  similarities to the training pairs (the anchors) of its own modality.

Use ``fit_baseline(name, x_train, y_train, **params)``; the result has
``transform_image(x)``, ``transform_text(y)`` and ``similarity(x, y)``.
Features are L2-normalised per row first by default (``normalize=True``): the
encoders' outputs are compared by cosine everywhere else in the toolkit.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignprobe.errors import NotFittedError, ValidationError

from ._neighbors import unit_rows
from ._validation import as_int, as_matrix, as_positive_float, same_rows


def _features(x: Any, name: str, normalize: bool, min_rows: int = 1) -> torch.Tensor:
    t = as_matrix(x, name, dtype=torch.float64, min_rows=min_rows).cpu()
    return unit_rows(t, name) if normalize else t


def _inv_sqrt(c: torch.Tensor, reg: float) -> torch.Tensor:
    """(C + reg * mean_eig * I)^(-1/2) of a symmetric PSD matrix; reg is relative to the mean eigenvalue."""
    evals, evecs = torch.linalg.eigh(c)
    shift = reg * float(evals.clamp(min=0).mean())
    inv = 1.0 / torch.sqrt(evals.clamp(min=0) + shift)
    return (evecs * inv) @ evecs.T


def _check_bool(v: Any, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValidationError(f"{name} must be True or False; got {v!r}")
    return bool(v)


def _check_reg(v: Any, name: str, allow_zero: bool = True) -> float:
    if allow_zero and isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
        return 0.0
    return as_positive_float(v, name)


class Baseline:
    """Base class: hyperparameters in ``__init__``, ``fit`` returns self, learned state ends in ``_``."""

    name = "baseline"

    def __init__(self, *, normalize: bool = True):
        self.normalize = _check_bool(normalize, "normalize")

    # --- the interface ---
    def fit(self, x_train: Any, y_train: Any) -> "Baseline":
        x = _features(x_train, "x_train", self.normalize, min_rows=2)
        y = _features(y_train, "y_train", self.normalize, min_rows=2)
        same_rows(x, y, "x_train", "y_train")
        self.dims_ = (x.shape[1], y.shape[1])
        self._fit(x, y)
        self.n_train_ = x.shape[0]
        return self

    def transform_image(self, x: Any) -> np.ndarray:
        """(m, d_x) image features -> (m, k) shared-space embeddings (float32)."""
        return self._transform(x, "x", 0)

    def transform_text(self, y: Any) -> np.ndarray:
        """(m, d_y) text features -> (m, k) shared-space embeddings (float32)."""
        return self._transform(y, "y", 1)

    def similarity(self, x: Any, y: Any) -> np.ndarray:
        """(m_x, m_y) cosine similarities of mapped images x and mapped texts y (rows: images)."""
        a = unit_rows(torch.from_numpy(self.transform_image(x)).double(), "mapped images")
        b = unit_rows(torch.from_numpy(self.transform_text(y)).double(), "mapped texts")
        return (a @ b.T).numpy()

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # --- what subclasses provide ---
    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def _map(self, t: torch.Tensor, side: int) -> torch.Tensor:
        raise NotImplementedError

    def _transform(self, v: Any, name: str, side: int) -> np.ndarray:
        if not hasattr(self, "dims_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x_train, y_train) first")
        t = _features(v, name, self.normalize)
        if t.shape[1] != self.dims_[side]:
            what = "image" if side == 0 else "text"
            raise ValidationError(
                f"{name} must have {self.dims_[side]} features, like the {what} features it was fitted on; "
                f"got {t.shape[1]}"
            )
        return self._map(t, side).to(torch.float32).numpy()


class ProcrustesBaseline(Baseline):
    """Orthogonal Procrustes: images x -> (x - mu_x) W_x R, texts y -> (y - mu_y) W_y.

    R = U V^T from the SVD U S V^T = X^T Y of the centred (and, with
    ``whiten``, whitened) training features; it minimises ||X R - Y||_F over
    R with orthonormal rows or columns (Schönemann 1966). Different widths:
    R is d_x x d_y with R R^T = I (d_x <= d_y) or R^T R = I (d_x > d_y), which
    is the square Procrustes solution after zero-padding the narrower side
    (padding adds no cross-covariance, so nothing is lost or invented).
    ``whiten`` (W = C^(-1/2), ridge ``reg`` relative to the mean eigenvalue)
    first gives both sides identity covariance; then X^T Y is the whitened
    cross-covariance and the map is CCA's with every component at equal
    weight. Without it (the default) W = I and the map is rigid: the purest
    test of whether the two geometries already agree.
    """

    name = "procrustes"

    def __init__(self, *, whiten: bool = False, reg: float = 1e-3, normalize: bool = True):
        super().__init__(normalize=normalize)
        self.whiten = _check_bool(whiten, "whiten")
        self.reg = _check_reg(reg, "reg")

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.mean_ = (x.mean(0), y.mean(0))
        xc, yc = x - self.mean_[0], y - self.mean_[1]
        n = x.shape[0]
        if self.whiten:
            self.whitener_ = (_inv_sqrt(xc.T @ xc / (n - 1), self.reg), _inv_sqrt(yc.T @ yc / (n - 1), self.reg))
            xc, yc = xc @ self.whitener_[0], yc @ self.whitener_[1]
        else:
            self.whitener_ = None
        u, _, vh = torch.linalg.svd(xc.T @ yc, full_matrices=False)
        self.rotation_ = u @ vh  # (d_x, d_y)

    def _map(self, t: torch.Tensor, side: int) -> torch.Tensor:
        t = t - self.mean_[side]
        if self.whitener_ is not None:
            t = t @ self.whitener_[side]
        return t @ self.rotation_ if side == 0 else t


class RidgeBaseline(Baseline):
    """Ridge least squares from image to text space: images x -> (x - mu_x) W, texts y -> y - mu_y.

        W = argmin ||X W - Y||_F^2 + lam ||W||_F^2 = (X^T X + lam I)^(-1) X^T Y

    on the centred training features (the centring is the intercept), with
    lam = ``alpha`` * mean eigenvalue of X^T X so the knob does not depend on
    the features' scale. Texts stay in their own (centred) space.
    """

    name = "ridge"

    def __init__(self, *, alpha: float = 1e-2, normalize: bool = True):
        super().__init__(normalize=normalize)
        self.alpha = _check_reg(alpha, "alpha")

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.mean_ = (x.mean(0), y.mean(0))
        xc, yc = x - self.mean_[0], y - self.mean_[1]
        gram = xc.T @ xc
        lam = self.alpha * float(torch.diagonal(gram).mean())
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        # lstsq: with alpha = 0 and d_x >= n the system is singular; lstsq gives the minimum-norm solution
        self.coef_ = torch.linalg.lstsq(gram + lam * eye, xc.T @ yc).solution

    def _map(self, t: torch.Tensor, side: int) -> torch.Tensor:
        t = t - self.mean_[side]
        return t @ self.coef_ if side == 0 else t


class CCABaseline(Baseline):
    """Canonical correlation analysis, top ``n_components`` directions of each side.

    With C_xx, C_yy, C_xy the training covariances (ridge ``reg`` times the
    mean eigenvalue added to C_xx and C_yy, needed when d approaches n), the
    SVD U S V^T of T = C_xx^(-1/2) C_xy C_yy^(-1/2) gives the canonical
    correlations S and directions A = C_xx^(-1/2) U_k, B = C_yy^(-1/2) V_k;
    images x -> (x - mu_x) A, texts y -> (y - mu_y) B. With ``scale_by_corr``
    each component is multiplied by its correlation, so weakly shared
    directions count less in the cosine.

    Closed form (one SVD of the whitened cross-covariance) rather than
    scikit-learn's ``CCA``: that one fits components one at a time by NIPALS
    iterations, which is approximate and slow at d = 768, and has no ridge.
    """

    name = "cca"

    def __init__(self, *, n_components: int | None = None, reg: float = 1e-3, scale_by_corr: bool = False,
                 normalize: bool = True):
        super().__init__(normalize=normalize)
        self.n_components = None if n_components is None else as_int(n_components, "n_components", low=1)
        self.reg = _check_reg(reg, "reg")
        self.scale_by_corr = _check_bool(scale_by_corr, "scale_by_corr")

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n = x.shape[0]
        limit = min(x.shape[1], y.shape[1], n - 1)
        k = limit if self.n_components is None else self.n_components
        if k > limit:
            raise ValidationError(
                f"n_components must be <= min(d_x, d_y, n - 1) = min({x.shape[1]}, {y.shape[1]}, {n - 1}); got {k}"
            )
        self.mean_ = (x.mean(0), y.mean(0))
        xc, yc = x - self.mean_[0], y - self.mean_[1]
        wx = _inv_sqrt(xc.T @ xc / (n - 1), self.reg)
        wy = _inv_sqrt(yc.T @ yc / (n - 1), self.reg)
        u, s, vh = torch.linalg.svd(wx @ (xc.T @ yc / (n - 1)) @ wy, full_matrices=False)
        self.correlations_ = s[:k]
        scale = s[:k] if self.scale_by_corr else torch.ones(k, dtype=s.dtype)
        self.directions_ = (wx @ u[:, :k] * scale, wy @ vh[:k].T * scale)

    def _map(self, t: torch.Tensor, side: int) -> torch.Tensor:
        return (t - self.mean_[side]) @ self.directions_[side]


class ASIFBaseline(Baseline):
    """ASIF relative representations (Norelli et al., NeurIPS 2023).

    The anchors are the training pairs. An image x is represented by its
    cosine similarities to the training images, a text y by its similarities
    to the training captions, so both live in R^n_anchors with coordinate i
    meaning "pair i":

        r(x) = renormalise( keep_top_k( max(cos(x, anchors), 0) ) ^ p )

    keeping the ``k`` largest similarities per sample (the rest set to 0),
    raising them to the exponent ``p`` (sharpening) and L2-renormalising. The
    paper uses k = 800 and p = 8 with 1.6 M anchors; k is capped at the number
    of anchors. Negative similarities are clipped to 0 before the exponent (an
    even p would otherwise turn them into strong matches). The outputs are
    dense (m, n_anchors) float32 arrays: transform at most a few thousand
    samples against ~100 k anchors at a time (``chunk_size`` rows are scored
    per block). ``normalize`` changes nothing here: the similarities are cosines.
    """

    name = "asif"

    def __init__(self, *, k: int = 800, p: float = 8.0, chunk_size: int = 1024, normalize: bool = True):
        super().__init__(normalize=normalize)
        self.k = as_int(k, "k", low=1)
        self.p = as_positive_float(p, "p")
        self.chunk_size = as_int(chunk_size, "chunk_size", low=1)

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # cosine against the anchors whatever `normalize` says: ASIF's similarities are cosines
        self.anchors_ = (unit_rows(x, "x_train").float(), unit_rows(y, "y_train").float())

    def _map(self, t: torch.Tensor, side: int) -> torch.Tensor:
        anchors = self.anchors_[side]
        k = min(self.k, anchors.shape[0])
        q = unit_rows(t, "x" if side == 0 else "y").float()
        out = torch.zeros(q.shape[0], anchors.shape[0], dtype=torch.float32)
        for start in range(0, q.shape[0], self.chunk_size):
            sims = q[start:start + self.chunk_size] @ anchors.T
            vals, idx = torch.topk(sims, k, dim=1)
            vals = vals.clamp(min=0) ** self.p
            block = torch.zeros_like(sims).scatter_(1, idx, vals)
            norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
            out[start:start + self.chunk_size] = block / torch.where(norms > 0, norms, torch.ones_like(norms))
        return out


#: name -> class of every training-free baseline.
BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (ProcrustesBaseline, RidgeBaseline, CCABaseline, ASIFBaseline)
}


def fit_baseline(name: str, x_train: Any, y_train: Any, **params: Any) -> Baseline:
    """Fit the training-free baseline ``name`` (one of ``BASELINES``) on paired image / text features.

    Args:
        name: "procrustes", "ridge", "cca" or "asif".
        x_train: (n, d_x) image features.  y_train: (n, d_y) text features of the same pairs.
        **params: the baseline's hyperparameters (see its class: e.g. ``whiten``,
            ``alpha``, ``n_components``, ``k`` and ``p``).

    Returns the fitted ``Baseline``.
    """
    try:
        cls = BASELINES[name]
    except (KeyError, TypeError):
        raise ValidationError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINES)}") from None
    try:
        model = cls(**params)
    except TypeError as exc:
        raise ValidationError(f"baseline {name!r}: {exc}") from None
    return model.fit(x_train, y_train)
