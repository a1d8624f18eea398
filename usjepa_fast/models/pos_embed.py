"""Fixed 2D sine-cosine position embeddings (MAE / I-JEPA layout).

Half of the channels encode the row, half the column; each half is sin/cos over geometric
frequencies. Fixed embeddings let the predictor place mask tokens at any grid position without
learning a table, and match what I-JEPA and US-JEPA use for both encoder and predictor.
"""

from __future__ import annotations

import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) embedding."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = pos.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major (gh*gw, embed_dim) float32 table for a (gh, gw) patch grid."""
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)  # (gh*gw,) row index of each token
    cols = torch.arange(gw).repeat(gh)
    # I-JEPA/MAE put the width coordinate first; keep that order so tables are interchangeable.
    emb = torch.cat([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], dim=1)
    return emb.float()
