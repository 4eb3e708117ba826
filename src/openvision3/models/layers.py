"""Transformer building blocks shared by every tower (encoder, decoder, text towers).

One block = one ``nn.Module`` with a ``forward``: the unit that FSDP2, activation
checkpointing and ``torch.compile`` are applied to from outside (see ``distributed/``).
Parameter names are an API (``inference/`` converts the released open_clip layout to them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a packed q;k;v projection and SDPA."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """x: (B, N, D); attn_mask: bool (B or 1, 1, N, N), True = may attend -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, K, N, D/K)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU (as the released encoder)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of ``Block``s; ``blocks`` is the list parallelism wraps one by one."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, eps) for _ in range(depth))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linears with zero bias, unit LayerNorms (the ViT/MAE recipe)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
