"""The OpenVision 3 encoder: a ViT over the VAE latents (patch 2 on latents = 16x on pixels).

Returns the *unified tokens* (the last block's output for the patch tokens, without a final
LayerNorm, exactly as the released checkpoint does) and, separately, the pooled embedding
``head(norm(mean(tokens)))`` used by the contrastive loss (open_clip ``pool_type="avg"``,
``final_ln_after_pool=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from openvision3.models.layers import Block, init_weights
from openvision3.models.posemb import resample_table, sincos_2d


@dataclass
class EncoderConfig:
    """ViT over latents. ``pos_embed``: "sincos" (recomputed per grid) or "learned" (a stored
    table for ``pos_grid``, resampled bicubically for other grids; the released checkpoints)."""

    in_channels: int = 16
    patch_size: int = 2
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    embed_dim: int = 512
    ln_eps: float = 1e-6
    pos_embed: str = "sincos"
    pos_grid: tuple[int, int] = (16, 16)
    patch_bias: bool = False

    def __post_init__(self):
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(
                f"encoder.pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}"
            )
        if self.width % self.heads:
            raise ValueError(f"encoder.width {self.width} not divisible by heads {self.heads}")
        if min(self.in_channels, self.patch_size, self.width, self.depth, self.embed_dim) < 1:
            raise ValueError("encoder sizes must be positive")
        self.pos_grid = tuple(self.pos_grid)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.patch_embed = nn.Conv2d(
            cfg.in_channels, d, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias
        )
        self.cls_token = nn.Parameter(torch.zeros(d))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1 + cfg.pos_grid[0] * cfg.pos_grid[1], d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.mlp_ratio, cfg.ln_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.head = nn.Linear(d, cfg.embed_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer (MAE)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.cfg.pos_embed == "learned":
            nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.head.weight, std=self.cfg.width**-0.5)

    def grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        p = self.cfg.patch_size
        return latent_hw[0] // p, latent_hw[1] // p

    def position_table(self, grid: tuple[int, int], device, dtype) -> torch.Tensor:
        """(1 + N, D): the CLS row then the grid rows in row-major order."""
        if self.cfg.pos_embed == "sincos":
            table = sincos_2d(self.cfg.width, *grid).to(device=device, dtype=dtype)
            return torch.cat([table.new_zeros(1, self.cfg.width), table], dim=0)
        cls_row, grid_rows = self.pos_embed[:1], self.pos_embed[1:]
        return torch.cat([cls_row, resample_table(grid_rows, self.cfg.pos_grid, grid)], dim=0)

    def forward_features(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, 1 + N, D): CLS then patch tokens after the last block."""
        x = self.patch_embed(latents)  # (B, C, H, W) -> (B, D, H/p, W/p)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), row-major over the grid
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_table(grid, x.device, x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unified tokens (B, N, D), N = (H/p)(W/p); no final LayerNorm."""
        return self.forward_features(latents)[:, 1:]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unified tokens (B, N, D) -> pooled embedding (B, E) = head(LN(mean_N tokens))."""
        return self.head(self.norm(tokens.mean(dim=1)))
