"""The sweep's preconditioner: which path runs, that its coordinates lose nothing, that its bound holds."""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.probe.precondition import EXACT_MAX_DIM, curvature_bound


def _features(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred, ill-conditioned features (a few strong directions over a decaying tail) and uniform weights."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.cat([torch.full((8,), 6.0), torch.linspace(2.0, 0.1, d - 8)])
    z = torch.randn(n, d, generator=g) * scales
    z = z @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]  # rotate: no axis-aligned structure
    z = z - z.mean(dim=0)
    return z, torch.full((n,), 1.0 / n)


CASES = [(120, 40, "covariance"), (60, 300, "gram"), (400, 200, "low-rank")]


@pytest.mark.parametrize("n, d, path", CASES)
def test_path_is_chosen_by_the_smaller_side(n: int, d: int, path: str) -> None:
    z, sw = _features(n, d)
    curv, top = curvature_bound(z, sw, rank=16)
    assert curv.exact == (min(n, d) <= EXACT_MAX_DIM) == (path != "low-rank")
    torch.testing.assert_close(top, z @ curv.basis, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n, d, path", CASES[:2])
def test_exact_paths_diagonalise_the_covariance_on_its_whole_span(n: int, d: int, path: str) -> None:
    z, sw = _features(n, d)
    curv, _ = curvature_bound(z, sw, rank=16)
    m = (z.double().T * sw.double()) @ z.double()
    basis = curv.basis.double()
    assert basis.shape[1] == torch.linalg.matrix_rank(m).item()  # every non-null direction, no null one
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(basis.T @ m @ basis, torch.diag(curv.lam.double()), atol=1e-4, rtol=1e-4)
    assert bool((curv.lam[:-1] >= curv.lam[1:]).all())  # largest first


@pytest.mark.parametrize("n, d, path", CASES)
def test_coordinates_and_weights_give_the_same_logits(n: int, d: int, path: str) -> None:
    """A head in the heads' coordinates, mapped back by ``weights``, gives the same logits on the features
    (for the low-rank path: a head whose second block lies in the complement, as the trained ones do)."""
    z, sw = _features(n, d)
    curv, top = curvature_bound(z, sw, rank=16)
    coords = curv.coordinates(z, top)
    r = curv.basis.shape[1]
    assert coords.shape == (n, r if curv.exact else r + d)
    a = torch.randn(coords.shape[1], 5, generator=torch.Generator().manual_seed(1))
    if not curv.exact:
        a[r:] -= curv.basis @ (curv.basis.T @ a[r:])
    torch.testing.assert_close(coords @ a, z @ curv.weights(a), atol=1e-3, rtol=1e-3)
    if not curv.exact:  # the complement block carries what the top directions do not
        torch.testing.assert_close(coords[:, r:] @ curv.basis, torch.zeros(n, r), atol=1e-3, rtol=0)


def test_low_rank_bound_covers_the_spectrum() -> None:
    """``basis diag(lam) basis^T + lam_tail (I - basis basis^T)`` bounds M up to the margin that Boehning's
    bound (loose by >= 2x) absorbs; the tail bound is not below the complement's true top eigenvalue."""
    z, sw = _features(400, 200)
    curv, _ = curvature_bound(z, sw, rank=16)
    assert not curv.exact and curv.lam_tail > 0
    m = (z.double().T * sw.double()) @ z.double()
    b = curv.basis.double()
    comp = torch.eye(200, dtype=torch.float64) - b @ b.T
    true_tail = torch.linalg.eigvalsh(comp @ m @ comp)[-1].item()
    assert curv.lam_tail >= true_tail
    bound = b @ torch.diag(curv.lam.double()) @ b.T + curv.lam_tail * comp
    inv_root = torch.linalg.inv(torch.linalg.cholesky(bound))
    assert torch.linalg.eigvalsh(inv_root @ m @ inv_root.T)[-1].item() < 1.5
    scale = curv.step_scale(torch.tensor([0.1, 1.0]))
    assert scale.shape == (16 + 200, 2)
    torch.testing.assert_close(scale[0], 1.0 / (0.5 * curv.lam[0] + torch.tensor([0.1, 1.0])))
    torch.testing.assert_close(scale[-1], 1.0 / (0.5 * curv.lam_tail + torch.tensor([0.1, 1.0])))
