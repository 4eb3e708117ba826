"""Text encoder for the contrastive loss (the understanding branch).

Follows OpenVision's text tower (the OpenVision 3 paper keeps it): token embedding + learned
positions, a *bidirectional* pre-LN transformer whose keys are restricted to the real tokens, a
final LayerNorm, pooling at the END token (a last [CLS]-like token), and a bias-free projection
to the shared embedding space. Sizes: B 512/12/8, L 768/12/12 (see ``presets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from openvision3.models.layers import Transformer, init_weights
from openvision3.tokenizer import EOT_ID, PAD_ID, VOCAB_SIZE


@dataclass
class TextEncoderConfig:
    vocab_size: int = VOCAB_SIZE  # tokenizer vocabulary
    context_length: int = 80  # text tokens per caption (longer ones are cut)
    width: int = 512  # transformer width
    depth: int = 12  # transformer blocks
    heads: int = 8  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    embed_dim: int = 512  # contrastive embedding size (shared with the image)
    eos_id: int = EOT_ID  # end-of-text token id (its output is the text embedding)
    pad_id: int = PAD_ID  # padding token id
    ln_eps: float = 1e-6  # LayerNorm epsilon

    def __post_init__(self):
        sizes = (self.vocab_size, self.context_length, self.width, self.depth, self.heads)
        if min(*sizes, self.embed_dim) < 1:
            raise ValueError(f"text sizes must be positive, got {self}")
        if self.width % self.heads:
            raise ValueError(f"text.width {self.width} not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"text.mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("eos_id", "pad_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(
                    f"text.{name} must lie in [0, {self.vocab_size}), got {getattr(self, name)}"
                )
        if self.eos_id == self.pad_id:
            raise ValueError("text.eos_id and text.pad_id must differ")


def end_positions(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """(B, L) ids -> (B,) index of the END token: the first ``eos_id`` of each row, or, for a
    row cut without one, its last non-pad position (0 for an all-pad row)."""
    is_eos = ids == eos_id
    first_eos = is_eos.int().argmax(dim=1)  # argmax returns the first maximal index
    pos = torch.arange(ids.shape[1], device=ids.device)
    last_real = ((ids != pad_id) * pos).amax(dim=1)
    return torch.where(is_eos.any(dim=1), first_eos, last_real)


class TextEncoder(nn.Module):
    """``forward(ids (B, L)) -> (B, E)``, un-normalised; L may be shorter than context_length."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, d))
        self.transformer = Transformer(d, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.ln_eps)
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.proj = nn.Linear(d, cfg.embed_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward_features(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> (final-LN tokens (B, L, D), END positions (B,)).

        Keys after the END token are masked, so padding (whatever its id) never changes the
        real tokens; masking by position rather than by ``id == pad_id`` keeps a real token that
        shares the pad id (``!`` is id 0 in the CLIP vocabulary) visible.
        """
        b, n = ids.shape
        if n > self.cfg.context_length:
            raise ValueError(f"text length {n} exceeds context_length {self.cfg.context_length}")
        end = end_positions(ids, self.cfg.eos_id, self.cfg.pad_id)  # (B,)
        keep = torch.arange(n, device=ids.device) <= end[:, None]  # (B, L), True = real token
        x = self.token_embed(ids) + self.pos_embed[:, :n]  # (B, L) -> (B, L, D)
        x = self.transformer(x, attn_mask=keep.view(b, 1, 1, n))  # keys masked for every query
        return self.norm(x), end

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, E) embedding taken at the END token, not L2-normalised."""
        x, end = self.forward_features(ids)
        pooled = x[torch.arange(x.shape[0], device=x.device), end]  # (B, D)
        return self.proj(pooled)
