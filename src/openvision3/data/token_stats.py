"""Per-position token statistics for diffusion on the unified tokens (RAE-style normalisation).

RAE (``src/stage1/rae.py``, ``src/calculate_stat.py``) normalises the encoder tokens per
position and channel with statistics over the training set: ``(z - mean) / sqrt(var + eps)``,
eps = 1e-5. Statistics are stored in the (D, h, w) grid layout of the diffusion trainers, in a safetensors file beside the
model: ``mean``, ``var`` and the image ``count`` in the metadata.
"""

from __future__ import annotations

import json

import torch

EPS = 1e-5


class TokenStats:
    """Running per-position mean and variance of tokens (B, N, D), merged per batch in float64
    with Chan et al.'s parallel update (stable for millions of images)."""

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None  # (N, D) float64
        self.m2: torch.Tensor | None = None  # (N, D) sum of squared deviations

    def update(self, tokens: torch.Tensor) -> None:
        """Add a batch of tokens (B, N, D)."""
        x = tokens.detach().to("cpu", torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean_b, m2_b
            return
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"token shape {tuple(mean_b.shape)} != {tuple(self.mean.shape)}")
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n / total)
        self.count = total

    def compute(self, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """-> ``mean`` and ``var`` (population variance), float32 (D, h, w) for token grid (h, w)."""
        if self.mean is None:
            raise ValueError("no tokens were added")
        h, w = grid
        var = self.m2 / self.count
        to_grid = lambda t: t.float().t().reshape(t.shape[1], h, w).contiguous()  # noqa: E731
        return {"mean": to_grid(self.mean), "var": to_grid(var)}

    def save(self, path: str, grid: tuple[int, int], meta: dict | None = None) -> None:
        """Write ``mean`` / ``var`` (D, h, w) and the metadata to a safetensors file."""
        from safetensors.torch import save_file

        info = {"count": str(self.count), "eps": str(EPS), "layout": "(D, h, w)"}
        info.update(
            {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (meta or {}).items()}
        )
        save_file(self.compute(grid), path, metadata=info)


def load_token_stats(path: str) -> dict[str, torch.Tensor]:
    """Read a ``latent-stats`` file -> {"mean": (D, h, w), "var": (D, h, w)}."""
    from safetensors.torch import load_file

    return load_file(path)


def normalize(grid_tokens: torch.Tensor, stats: dict[str, torch.Tensor], eps: float = EPS):
    """(B, D, h, w) tokens -> ``(z - mean) / sqrt(var + eps)`` with per-position statistics."""
    mean = stats["mean"].to(grid_tokens)
    var = stats["var"].to(grid_tokens)
    return (grid_tokens - mean) / torch.sqrt(var + eps)


def denormalize(grid_tokens: torch.Tensor, stats: dict[str, torch.Tensor], eps: float = EPS):
    """Inverse of ``normalize``: generated (B, D, h, w) -> tokens for the decoder."""
    mean = stats["mean"].to(grid_tokens)
    var = stats["var"].to(grid_tokens)
    return grid_tokens * torch.sqrt(var + eps) + mean
