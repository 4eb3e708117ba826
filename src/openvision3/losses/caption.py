"""Autoregressive caption loss: token-mean cross entropy over non-padding targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openvision3.tokenizer import PAD_ID


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """Next-token cross entropy averaged over the target tokens that are not padding.

    The model supplies logits and targets already aligned (logits[:, t] predicts
    targets[:, t]). The mean is per process; ranks with fewer tokens weigh the same.

    Args:
        logits: (B, L, V) unnormalised scores.
        targets: (B, L) token ids; positions equal to ``pad_id`` are ignored.
        pad_id: id of the padding token.

    Returns:
        () scalar loss (NaN when every target is padding).
    """
    # (B, L, V) -> (B * L, V) against (B * L,)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
