"""L-BFGS for a path of L2-regularised problems that share their data term.

Minimises f(θ) = data(θ) + (l2 / 2) ||P θ||^2 for a sequence of strengths l2,
where P selects the penalised coordinates. Between strengths the curvature
pairs are kept: the Hessian changes by exactly Δl2 · PᵀP, so each stored pair
(s, y) becomes (s, y + Δl2 · P s). The next fit then starts with a good
inverse-Hessian model instead of rebuilding it, which (with a long memory)
is what makes the warm-started path much cheaper than independent fits.

The inverse-Hessian product uses the compact representation of Byrd,
Nocedal & Schnabel (1994): with the pairs stacked as rows of S and Y, one
product costs four matrix-vector products with S and Y plus m x m solves,
instead of the two-loop recursion's 4m vector operations (which are slow
when many small kernels compete for a busy CPU). The line search backtracks
from step 1 (Armijo), which L-BFGS steps usually pass at once.
"""
from __future__ import annotations

from typing import Callable

import torch

# f, grad = fn(theta, l2)
ObjectiveFn = Callable[[torch.Tensor, float], tuple[float, torch.Tensor]]


class PathLBFGS:
    def __init__(self, fn: ObjectiveFn, penalised: torch.Tensor, history: int):
        self.fn = fn
        self.mask = penalised  # 0/1 tensor broadcastable to theta: the coordinates the L2 term covers
        self.history = history
        self.l2: float | None = None
        self._shape: torch.Size | None = None
        # Pairs live in fixed buffers; `_slots` lists their rows oldest first, so
        # dropping the oldest pair never moves the (large) stored vectors.
        self._S: torch.Tensor | None = None
        self._Y: torch.Tensor | None = None
        self._slots: list[int] = []
        self._STY = torch.zeros(0, 0, dtype=torch.float64)  # s_i . y_j, chronological
        self._YTY = torch.zeros(0, 0, dtype=torch.float64)

    # ---- curvature memory ----

    def _rows(self) -> torch.Tensor:
        return torch.tensor(self._slots, dtype=torch.long, device=self._S.device)

    def _rebuild(self) -> None:
        rows = self._rows()
        S, Y = self._S[rows], self._Y[rows]
        self._STY = (S @ Y.T).double().cpu()
        self._YTY = (Y @ Y.T).double().cpu()

    def _push(self, s: torch.Tensor, y: torch.Tensor) -> None:
        if len(self._slots) == self.history:
            slot = self._slots.pop(0)
            self._STY, self._YTY = self._STY[1:, 1:], self._YTY[1:, 1:]
        else:
            slot = min(set(range(self.history)) - set(self._slots))
        self._S[slot] = s.reshape(-1)
        self._Y[slot] = y.reshape(-1)
        self._slots.append(slot)
        rows = self._rows()
        col = (self._S[rows] @ self._Y[slot]).double().cpu()  # s_j . y_new
        row = (self._Y[rows] @ self._S[slot]).double().cpu()  # s_new . y_j
        yy = (self._Y[rows] @ self._Y[slot]).double().cpu()
        m = len(self._slots)
        sty = torch.zeros(m, m, dtype=torch.float64)
        yty = torch.zeros_like(sty)
        sty[:-1, :-1], yty[:-1, :-1] = self._STY, self._YTY
        sty[:, -1], sty[-1, :] = col, row
        yty[:, -1], yty[-1, :] = yy, yy
        self._STY, self._YTY = sty, yty

    def reset(self) -> None:
        self._slots = []
        self._STY = torch.zeros(0, 0, dtype=torch.float64)
        self._YTY = torch.zeros(0, 0, dtype=torch.float64)

    def set_l2(self, l2: float) -> None:
        """Move the stored curvature pairs to a new L2 strength."""
        if self.l2 is not None and l2 != self.l2 and self._slots:
            rows = self._rows()
            flat_mask = self.mask.expand(self._shape).reshape(-1).to(self._S.dtype)
            self._Y[rows] += (l2 - self.l2) * self._S[rows] * flat_mask
            self._rebuild()
            keep = (torch.diagonal(self._STY) > 0).tolist()  # always true for a convex data term
            if not all(keep):
                self._slots = [slot for slot, k in zip(self._slots, keep) if k]
                self._rebuild()
        self.l2 = l2

    # ---- optimisation ----

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H g with the compact L-BFGS inverse Hessian (BNS 1994, eq. 2.6)."""
        gf = g.reshape(-1)
        if not self._slots:
            return -gf * min(1.0, 1.0 / max(float(gf.abs().sum()), 1e-12))
        # Products with the whole buffers, then the m-vectors are put in chronological order.
        used = max(self._slots) + 1
        S, Y = self._S[:used], self._Y[:used]
        order = self._slots
        sty = self._STY
        gamma = float(sty[-1, -1] / self._YTY[-1, -1])
        a = (S @ gf).double().cpu()[order]
        b = (Y @ gf).double().cpu()[order]
        R = torch.triu(sty)
        D = torch.diagonal(sty)
        u = torch.linalg.solve_triangular(R, a[:, None], upper=True)[:, 0]
        v = D * u + gamma * (self._YTY @ u) - gamma * b
        p1 = torch.linalg.solve_triangular(R.T, v[:, None], upper=False)[:, 0]
        p1_rows = torch.zeros(used, dtype=torch.float64)
        u_rows = torch.zeros(used, dtype=torch.float64)
        p1_rows[order], u_rows[order] = p1, u
        hg = gamma * gf + p1_rows.to(gf) @ S - gamma * (u_rows.to(gf) @ Y)
        return -hg

    def minimize(
        self,
        theta: torch.Tensor,
        max_iter: int,
        tol: float,
        start: tuple[float, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, float, torch.Tensor, int]:
        """Run until max |grad| <= tol or max_iter iterations; returns (theta, f, grad, iterations)."""
        assert self.l2 is not None
        if self._S is None:
            self._S = torch.zeros(self.history, theta.numel(), dtype=theta.dtype, device=theta.device)
            self._Y = torch.zeros_like(self._S)
        self._shape = theta.shape
        f, g = start if start is not None else self.fn(theta, self.l2)
        it = stalls = 0
        floor = 4 * torch.finfo(theta.dtype).eps  # relative precision of f
        while it < max_iter and float(g.abs().max()) > tol:
            d = self._direction(g).reshape(theta.shape)
            gtd = float(torch.dot(g.reshape(-1), d.reshape(-1)))
            if gtd >= 0:  # stale curvature: restart from steepest descent
                self.reset()
                d = self._direction(g).reshape(theta.shape)
                gtd = float(torch.dot(g.reshape(-1), d.reshape(-1)))
            t = 1.0
            for _ in range(20):
                new = theta + t * d
                f_new, g_new = self.fn(new, self.l2)
                if f_new <= f + 1e-4 * t * gtd:
                    break
                t *= 0.5
            else:
                break  # no decrease along a descent direction: at the objective's precision floor
            # A tol below what float32 gradients can resolve would otherwise spin on
            # vanishing decreases until max_iter.
            stalls = stalls + 1 if f - f_new <= floor * max(1.0, abs(f)) else 0
            s, y = new - theta, g_new - g
            sy = float(torch.dot(s.reshape(-1), y.reshape(-1)))
            if sy > 1e-10 * float(torch.dot(y.reshape(-1), y.reshape(-1))):
                self._push(s, y)
            theta, f, g = new, f_new, g_new
            it += 1
            if stalls >= 3:
                break
        return theta, f, g, it
