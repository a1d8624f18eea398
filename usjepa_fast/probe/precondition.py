"""The sweep's preconditioner: coordinates in which the heads' Hessian bound is diagonal.

The sweep minimises ``mean CE + wd/2 ||W||^2`` on centred features ``z`` (bias unpenalised). Its
Hessian is bounded by ``M / 2 + wd I`` for the weights and ``1/2`` for the bias (Boehning's bound),
``M = z^T diag(sw) z`` the (class-weighted) train covariance. On M's eigenvectors that bound is
diagonal, so the heads train on the features *rotated onto them*: the Newton-like step
``(M / 2 + wd)^-1 grad`` is then an elementwise scale of the gradient (:meth:`Curvature.step_scale`),
not two extra matmuls per step. Frozen-encoder features are far from isotropic (the top eigenvalue of
the standardised covariance is 47-215 out of a trace of D), which is why plain SGD oscillated.

Two ways to the eigenvectors (:func:`curvature_bound`, chosen by size):

exact     -- every non-null eigenpair: from the D x D covariance when D is small, or from the N x N
    Gram matrix when N is (few-shot subsets, small tasks on wide features; M's non-null eigenvectors
    are ``z^T diag(sqrt sw) u / sqrt(lam)`` for the Gram's eigenpairs). The heads see ``z @ basis``,
    (N, m) with m <= min(N, D): the L2 optimum has no weight outside the span of the training
    features, so nothing is lost, and a step in m dimensions is cheaper than one in D.
low-rank  -- the top-r eigenpairs by randomized subspace iteration (a few passes over the features,
    ``O(N D r)`` instead of a dense ``O(D^3)`` eigendecomposition) and one bound ``lam_tail`` for the
    rest of the spectrum. The heads see ``[z @ basis, z - (z @ basis) basis^T]``, (N, r + D): r
    eigen-coordinates, then the complement of the basis in the original coordinates (its gradient
    lies in the complement, so a head that starts at zero stays there and ``||W||^2`` is the sum of
    the two blocks' squares).

Both are tested against scikit-learn's optimum (tests/probe/test_probe_linear.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from usjepa_fast.probe.linear_engine import Prepared

# Eigen-directions of the train covariance below this fraction of the largest are numerically null
# (float64 eigendecompositions; the Gram path's basis divides by sqrt(lam), so it needs the floor too).
NULL_DIRECTION_RTOL = 1e-6
# Exact eigendecomposition when the smaller side of the (N, D) train features is at most this (few-shot
# subsets, narrow encoders): a float64 eigh of m x m then costs about what the randomized passes do
# (~2 ms at m = 160 on one core), and every step runs on m coordinates instead of r + D. Larger m
# grows as m^3 (350: 15 ms with the Gram product; 768: 95 ms), more than the whole sweep may take.
EXACT_MAX_DIM = 160
# Power iterations for the tail bound, from the best oversampled Ritz vector (already close to it).
TAIL_POWER_ITERS = 3


@dataclass
class Curvature:
    """Eigen-coordinates of the train covariance ``M`` and Boehning's bound in them.

    ``M ~= basis diag(lam) basis^T`` on the top ``r`` directions; every other direction has eigenvalue
    <= ``lam_tail``. ``lam_tail = 0``: ``basis`` spans every non-null direction (the exact path) and
    the heads need no other coordinate.
    """

    basis: torch.Tensor  # (D, r) orthonormal columns, largest eigenvalue first
    lam: torch.Tensor  # (r,) eigenvalue bounds
    lam_tail: float

    @property
    def exact(self) -> bool:
        return self.lam_tail <= 0

    def coordinates(self, z: torch.Tensor, top: torch.Tensor | None = None) -> torch.Tensor:
        """Centred features (N, D) -> what the heads see: (N, r), or (N, r + D) when low-rank.
        ``top``: ``z @ basis`` when already known."""
        top = z @ self.basis if top is None else top
        if self.exact:
            return top
        r = self.basis.shape[1]
        out = z.new_empty(z.shape[0], r + z.shape[1])
        out[:, :r] = top
        out[:, r:] = z
        out[:, r:].addmm_(top, self.basis.T, alpha=-1)  # the complement, z - top basis^T, in place
        return out

    def weights(self, a: torch.Tensor) -> torch.Tensor:
        """Heads in coordinates (..., r[+D], K) -> the same heads on the centred features (..., D, K)."""
        r = self.basis.shape[1]
        w = torch.matmul(self.basis, a[..., :r, :])
        return w if self.exact else w + a[..., r:, :]

    def step_scale(self, wd: torch.Tensor) -> torch.Tensor:
        """Per-column L2 strength (K,) -> (r[+D], K): the inverse of ``M / 2 + wd I`` on each coordinate."""
        top = 1.0 / (0.5 * self.lam[:, None] + wd[None, :])
        if self.exact:
            return top
        tail = (1.0 / (0.5 * self.lam_tail + wd))[None, :].expand(self.basis.shape[0], -1)
        return torch.cat([top, tail])


def _covariance_times(z: torch.Tensor, sw: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``M q`` for ``M = z^T diag(sw) z`` without forming M: (N, D), (N,), (D, k) -> (D, k)."""
    return z.T @ ((z @ q) * sw[:, None])


def _exact(z: torch.Tensor, sw: torch.Tensor) -> tuple[Curvature, torch.Tensor]:
    """Every non-null eigenpair of M, from the smaller of the covariance (D x D) and the Gram (N x N);
    also the train rows' coordinates ``z @ basis`` (N, m)."""
    n, d = z.shape
    z64, sw64 = z.double(), sw.double()
    if d <= n:
        lam, vec = torch.linalg.eigh(z64.T @ (z64 * sw64[:, None]))  # ascending
    else:
        root = sw64.sqrt()[:, None] * z64  # (N, D): M = root^T root, Gram = root root^T
        lam, u = torch.linalg.eigh(root @ root.T)
        vec = root.T @ u  # (D, N): M's eigenvectors times sqrt(lam)
    keep = lam > NULL_DIRECTION_RTOL * lam[-1].clamp_min(1e-30)
    lam, vec = lam[keep].flip(0), vec[:, keep].flip(1)  # largest first
    if d > n:
        vec = vec / lam.sqrt()
    basis = vec.to(z.dtype)
    return Curvature(basis, lam.to(z.dtype), 0.0), z @ basis


def _low_rank(
    z: torch.Tensor, sw: torch.Tensor, rank: int, oversample: int, power_iters: int, seed: int
) -> tuple[Curvature, torch.Tensor]:
    """Top-``rank`` eigenpairs by randomized subspace iteration, a bound on the rest of the spectrum, and
    the train rows' top coordinates ``z @ basis`` (N, rank).

    Ritz values under-estimate eigenvalues, so the top ones get a 10 % margin and the tail bound is a
    power-iteration estimate on the complement with a 25 % margin; Boehning's bound is itself loose by
    2x or more, so the steps stay stable.
    """
    d, k = z.shape[1], rank + oversample
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(d, k, generator=gen).to(device=z.device, dtype=z.dtype)
    for _ in range(power_iters + 1):
        q, _ = torch.linalg.qr(_covariance_times(z, sw, q))
    zq = z @ q  # (N, k), kept: the train coordinates are zq @ u
    small = zq.T @ (zq * sw[:, None])  # (k, k) Rayleigh-Ritz: q^T M q
    theta, u = torch.linalg.eigh(0.5 * (small + small.T))  # ascending
    top = u[:, -rank:].flip(1)
    basis = q @ top  # (D, rank), largest first
    lam = theta[-rank:].flip(0).clamp_min(0) * 1.1
    # Largest eigenvalue of M on the complement of span(basis): power iterations started from the
    # largest oversampled Ritz direction (already close to it), plus a margin.
    v = q @ u[:, k - rank - 1 : k - rank]
    tail = float(theta[k - rank - 1].clamp_min(0))
    for _ in range(TAIL_POWER_ITERS):
        v = v - basis @ (basis.T @ v)
        nrm = float(v.norm())
        if nrm == 0.0:
            break
        v = v / nrm
        mv = _covariance_times(z, sw, v)
        mv = mv - basis @ (basis.T @ mv)
        tail = max(tail, float((v * mv).sum()))
        v = mv
    return Curvature(basis, lam, 1.25 * tail), zq @ top


def curvature_bound(
    z: torch.Tensor, sw: torch.Tensor, rank: int, oversample: int = 16, power_iters: int = 1, seed: int = 0
) -> tuple[Curvature, torch.Tensor]:
    """Eigen-coordinates of ``M = z^T diag(sw) z`` -- exact when the smaller side of ``z`` (N, D) is at most
    :data:`EXACT_MAX_DIM`, low-rank otherwise -- and the train rows' top coordinates ``z @ basis``."""
    if min(z.shape) <= max(rank + oversample, EXACT_MAX_DIM):
        return _exact(z, sw)
    return _low_rank(z, sw, rank, oversample, power_iters, seed)


def precondition(p: Prepared, rank: int = 64) -> Prepared:
    """Centre ``p`` on the (class-weighted) train mean and rotate it onto its eigen-coordinates.

    Centring decouples the bias from the weights in the Hessian bound (its curvature bound is 1/2).
    The returned features are the heads' coordinates; :meth:`Prepared.to_features` maps heads back.
    """
    n = p.xtr.shape[0]
    sw = torch.full((n,), 1.0 / n, device=p.device)
    if p.class_weight is not None:
        sw = p.class_weight[p.ytr]
        sw = sw / sw.sum()
    shift = sw @ p.xtr  # (D,)
    z = p.xtr - shift
    curvature, z_top = curvature_bound(z, sw, rank)
    return Prepared(
        xtr=curvature.coordinates(z, z_top),
        ytr=p.ytr,
        xva=curvature.coordinates(p.xva - shift),
        yva=p.yva,
        mean=p.mean,
        std=p.std,
        device=p.device,
        class_weight=p.class_weight,
        shift=shift,
        curvature=curvature,
    )
