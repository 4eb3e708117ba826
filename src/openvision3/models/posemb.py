"""2-D sin-cos position embeddings (MAE / DiT convention), recomputed for any grid.

Because the table is a function of the grid, one set of weights serves 128 px (8x8 tokens),
256 px (16x16) and non-square grids: the paper's 128 -> 256 px schedule needs no resampling.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: (M,) float -> (M, dim): [sin(pos * w), cos(pos * w)], w = 1 / 10000^(2i/dim)."""
    if dim % 2 != 0:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


@functools.lru_cache(maxsize=32)
def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h * grid_w, dim) float32 table in row-major (h, w) order, matching patch flattening.

    Cached per grid (callers must not modify it in place).

    The first half of the channels encodes the row (h), the second half the column (w).
    """
    if dim % 4 != 0:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    hh, ww = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    emb_h = sincos_1d(dim // 2, hh.reshape(-1))
    emb_w = sincos_1d(dim // 2, ww.reshape(-1))
    return torch.cat([emb_h, emb_w], dim=1).float()


def resample_table(
    table: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]
) -> torch.Tensor:
    """Bicubic resampling of a learned (h*w, D) position table to another grid -> (H'*W', D)."""
    if tuple(old_hw) == tuple(new_hw):
        return table
    d = table.shape[-1]
    grid = table.reshape(1, old_hw[0], old_hw[1], d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], d).to(table.dtype)
