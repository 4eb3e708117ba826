"""The ONLY patchify / unpatchify in the project.

Layout (pinned by ``tests/models/test_patching.py``): tokens in row-major order over the
(H/p, W/p) grid; within a token the p*p*C values are ordered (row-in-patch, column-in-patch,
channel), i.e. ``x[b, c, i*p + r, j*p + s]`` lands at ``tokens[b, i*(W/p) + j, (r*p + s)*C + c]``
(the DiT / MAE ``nhwpqc`` convention).
"""

from __future__ import annotations

import torch


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p)(W/p)."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"spatial size {(h, w)} is not divisible by the patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, H/p, W/p, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W) with (H, W) = (grid_h * p, grid_w * p)."""
    b, n, k = tokens.shape
    gh, gw = grid
    if n != gh * gw or k != p * p * channels:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} do not match grid {grid}, patch {p}, channels {channels}"
        )
    x = tokens.reshape(b, gh, gw, p, p, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, H/p, p, W/p, p)
    return x.reshape(b, channels, gh * p, gw * p)
