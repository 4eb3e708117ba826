"""Transformer building blocks shared by every tower (encoder, decoder, text towers).

One block = one ``nn.Module`` with a ``forward``: the unit that FSDP2, activation
checkpointing and ``torch.compile`` are applied to from outside (see ``distributed/``).
Parameter names are an API (``inference/`` converts the released open_clip layout to them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of the positions seen so far, one slot per attention layer, for
    incremental decoding: each call appends the new positions' keys and values, so a query
    attends to every cached position and to the new ones (masking among the new positions is
    the caller's ``attn_mask``). ``reorder`` follows beam search's parent rows."""

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, K, T, Dh) of the new positions -> all keys and values (B, K, T_all, Dh)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (R,) of every layer, in that order."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]

    def __len__(self) -> int:
        """Number of cached positions."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]


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
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        """x: (B, N, D); attn_mask: bool (B or 1, 1, N, N_keys), True = may attend -> (B, N, D).
        ``cache`` = (KVCache, layer index): keys/values of earlier positions are prepended."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, K, N, D/K)
        if cache is not None:
            k, v = cache[0].update(cache[1], k, v)  # (B, K, N_cached + N, D/K)
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
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, cache=cache)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of ``Block``s; ``blocks`` is the list parallelism wraps one by one."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, eps) for _ in range(depth))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D); with ``cache``, x holds only the new positions."""
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache, i)
            x = block(x, attn_mask=attn_mask, is_causal=is_causal, cache=layer_cache)
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
