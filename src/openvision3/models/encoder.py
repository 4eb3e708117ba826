"""The OpenVision 3 encoder: a ViT over the VAE latents (patch 2 on latents = 16x on pixels).

Returns the *unified tokens* (the last block's output for the patch tokens, without a final
LayerNorm, exactly as the released checkpoint does) and, separately, the pooled embedding
``head(norm(mean(tokens)))`` used by the contrastive loss (open_clip ``pool_type="avg"``,
``final_ln_after_pool=True``).

Layer taps follow timm's ``VisionTransformer`` API (``forward_intermediates``,
``prune_intermediate_layers``) and CLIP's ``hidden_states`` convention, for vision towers that
read an earlier block (LLaVA takes the penultimate one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from openvision3.models.layers import Block, init_weights
from openvision3.models.posemb import resample_table, sincos_2d


@dataclass
class EncoderConfig:
    """ViT over latents. `pos_embed`: "sincos" (recomputed per grid) or "learned" (a stored
    table for `pos_grid`, resampled bicubically for other grids; the released checkpoints)."""

    in_channels: int = 16  # latent channels C it reads (the VAE's; 3 for pixels)
    patch_size: int = 2  # latent pixels per token side (the /2 of ov3-B/2)
    width: int = 768  # transformer width D (the unified tokens' size)
    depth: int = 12  # transformer blocks
    heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    embed_dim: int = 512  # contrastive embedding size of the pooled image
    ln_eps: float = 1e-6  # LayerNorm epsilon
    # sincos (recomputed per grid) | learned (a table for pos_grid, resampled)
    pos_embed: str = "sincos"
    pos_grid: tuple[int, int] = (16, 16)  # token grid (h, w) of a learned position table
    patch_bias: bool = False  # bias in the patch embedding

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


def take_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """Block indices to tap, sorted and unique (timm's ``feature_take_indices``).

    ``None``: every block; an int n: the last n blocks; a sequence: those blocks, negative
    indices counted from the end (-1 = the last block). Out of range is a ``ValueError``.
    """
    if indices is None:
        indices = depth
    if isinstance(indices, bool):
        raise TypeError("indices must be an int, a sequence of ints or None, not a bool")
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"last-n indices={indices} is out of range (1 to {depth} blocks)")
        return list(range(depth - indices, depth))
    taken = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"block index {i!r} is not an int")
        if not -depth <= i < depth:
            raise ValueError(f"block index {i} is out of range ({-depth} to {depth - 1})")
        taken.add(i % depth)
    if not taken:
        raise ValueError("indices is empty: no block to tap")
    return sorted(taken)


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

    def prepare_tokens(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) latents -> the input to the first block (B, 1 + N, D) (patch embedding,
        CLS prepended, positions added) and the token grid (H/p, W/p), N = (H/p)(W/p)."""
        x = self.patch_embed(latents)  # (B, C, H, W) -> (B, D, H/p, W/p)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), row-major over the grid
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_table(grid, x.device, x.dtype)
        return x, grid

    def forward_features(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, 1 + N, D): CLS then patch tokens after the last block."""
        x, _ = self.prepare_tokens(latents)  # (B, 1 + N, D)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unified tokens (B, N, D), N = (H/p)(W/p); no final LayerNorm."""
        return self.forward_features(latents)[:, 1:]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unified tokens (B, N, D) -> pooled embedding (B, E) = head(LN(mean_N tokens))."""
        return self.head(self.norm(tokens.mean(dim=1)))

    def forward_intermediates(
        self,
        latents: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NLC",
        return_prefix_tokens: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ):
        """Block outputs as taps, timm's ``VisionTransformer.forward_intermediates``.

        Args:
            latents: (B, C, H, W).
            indices: blocks to tap (``take_indices``): None = all, an int n = the last n, a
                sequence = those blocks, negative from the end. Taps come in block order, each
                block once (as timm: [3, 1] yields block 1 then block 3).
            norm: apply ``self.norm`` to every token (CLS included) of each tap. This encoder
                has no final per-token norm: the unified tokens are the raw last block output,
                and ``self.norm`` is the LayerNorm the contrastive head applies to the mean of
                the tokens (``pool``). ``norm=True`` applies it, learned scale and shift
                included, to each token: there for timm compatibility, it does not give
                anything the model was trained to emit. The final features are never normed.
            output_fmt: "NLC" -> patch taps (B, N, D); "NCHW" -> (B, D, H/p, W/p), the N tokens
                laid out row-major over the grid (as ``patch_embed`` flattened them).
            return_prefix_tokens: each tap becomes a pair (patch tap, CLS row (B, 1, D)).
            stop_early: run blocks only up to the last tapped one; the taps are unchanged, but
                then the final features are that block's output (as timm).
            intermediates_only: return only the list of taps.

        Returns:
            ``(final, taps)``: final (B, 1 + N, D) = ``forward_features(latents)`` (unless
            ``stop_early``), taps a list as above; or only ``taps`` if ``intermediates_only``.
        """
        if output_fmt not in ("NLC", "NCHW"):
            raise ValueError(f"output_fmt must be 'NLC' or 'NCHW', got {output_fmt!r}")
        take = take_indices(len(self.blocks), indices)
        x, (h, w) = self.prepare_tokens(latents)  # (B, 1 + N, D)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in take:
                taps.append(self.norm(x) if norm else x)
            if stop_early and i == take[-1]:
                break
        cls = [t[:, :1] for t in taps]  # (B, 1, D) each
        taps = [t[:, 1:] for t in taps]  # (B, N, D) each
        if output_fmt == "NCHW":
            # (B, N, D) -> (B, H/p, W/p, D) -> (B, D, H/p, W/p)
            taps = [t.reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for t in taps]
        if return_prefix_tokens:
            taps = list(zip(taps, cls))
        return taps if intermediates_only else (x, taps)

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] | None = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks after the last tapped one (and the pooling norm / head if asked), in
        place, as timm; returns the tapped block indices. ``self.cfg`` is replaced by a copy with
        the new depth (the caller's config object is left alone); ``pool`` with a pruned head
        returns (B, D)."""
        take = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: take[-1] + 1]
        self.cfg = dataclasses.replace(self.cfg, depth=len(self.blocks))
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.head = nn.Identity()
        return take

    def hidden_states(
        self, latents: torch.Tensor, include_prefix: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """(B, C, H, W) -> depth + 1 tensors, CLIP's ``hidden_states``: entry 0 the embedding
        output (``prepare_tokens``), entry k the output of block k - 1; the last entry is the
        unified tokens (``forward``). So entry -2 is LLaVA's penultimate layer, and entry
        i + 1 is ``forward_intermediates``' tap of block i.

        Each entry is the patch tokens (B, N, D), or with ``include_prefix`` the CLS row then
        the patch tokens (B, 1 + N, D). No norm is applied.
        """
        x, _ = self.prepare_tokens(latents)  # (B, 1 + N, D)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return tuple(states) if include_prefix else tuple(s[:, 1:] for s in states)
