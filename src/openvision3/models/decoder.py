"""Reconstruction decoder: unified tokens -> VAE latents (the generation branch).

Parameter-free LayerNorm on the tokens, then (training only) noise ``sigma * eps`` with
``sigma ~ U[0, tau]`` per sample (RAE's noise-augmented decoding; the paper's tau is unstated,
0.8 follows RAE), an input projection, a ViT with patch 1 on the token grid (B/1 chosen by
the paper), a final LayerNorm and a linear layer to ``q*q*C`` values per token, unpatchified
to the latent grid (``q`` = decoder patch x encoder patch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.models.layers import Block, init_weights
from openvision3.models.patching import patchify, unpatchify
from openvision3.models.posemb import sincos_2d


@dataclass
class DecoderConfig:
    width: int = 768  # transformer width of the pixel decoder (ViT on the unified tokens)
    depth: int = 12  # decoder blocks
    heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    patch_size: int = 1  # latent pixels per decoded token side
    ln_eps: float = 1e-6  # LayerNorm epsilon
    noise_tau: float = 0.8  # training noise on the tokens: std drawn from [0, tau] (RAE); 0 = none

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"decoder.width {self.width} not divisible by heads {self.heads}")
        if self.noise_tau < 0:
            raise ValueError("decoder.noise_tau must be >= 0")
        if self.patch_size < 1 or self.depth < 1:
            raise ValueError("decoder.patch_size and depth must be >= 1")


class Decoder(nn.Module):
    """``forward(tokens (B, N, Din), grid (h, w)) -> latents (B, C, h*q, w*q)``."""

    def __init__(self, cfg: DecoderConfig, in_width: int, latent_channels: int, latent_patch: int):
        super().__init__()
        self.cfg = cfg
        self.in_width = in_width
        self.latent_channels = latent_channels
        self.out_patch = cfg.patch_size * latent_patch
        self.in_proj = nn.Linear(cfg.patch_size**2 * in_width, cfg.width)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.ln_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.width, self.out_patch**2 * latent_channels)
        init_weights(self)

    def add_noise(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) + sigma * eps, sigma ~ U[0, tau] per sample (training only)."""
        sigma = self.cfg.noise_tau * torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype)
        return x + sigma * torch.randn_like(x)

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], noise: bool | None = None
    ) -> torch.Tensor:
        """tokens (B, N, Din) on grid (h, w) -> latents (B, C, h*q, w*q).

        ``noise`` defaults to ``self.training``; evaluation and inference decode clean tokens.
        """
        noise = self.training if noise is None else noise
        x = F.layer_norm(tokens, (tokens.shape[-1],), eps=self.cfg.ln_eps)
        if noise and self.cfg.noise_tau > 0:
            x = self.add_noise(x)
        p = self.cfg.patch_size
        if p > 1:  # group p x p tokens into one decoder token
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, Din, h, w)
            x = patchify(x, p)  # (B, N/p^2, p*p*Din)
        dgrid = (grid[0] // p, grid[1] // p)
        x = self.in_proj(x)  # (B, N', D)
        x = x + sincos_2d(self.cfg.width, *dgrid).to(device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.norm(x))  # (B, N', q*q*C)
        return unpatchify(x, self.out_patch, dgrid, self.latent_channels)
