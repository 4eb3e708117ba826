"""Symmetric softmax InfoNCE (CLIP) with negatives gathered across ranks.

Same semantics as open_clip's ``ClipLoss(local_loss, gather_with_grad)``: with the local
loss each rank scores its own B rows against the world's B * world_size columns, so the
mean of the per-rank losses equals the single-process loss on the concatenated batch.
Every rank must hold the same batch size B (the labels are offset by B * rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from openvision3.distributed.process import get_rank, get_world_size

# CLIP caps the learned temperature at 100 (Radford et al. 2021, section 2.5).
MAX_LOGIT_SCALE = 100.0


def _gather(features: torch.Tensor, rank: int, world_size: int, with_grad: bool, local: bool):
    """All ranks' features stacked along the batch: (B, E) -> (B * world_size, E)."""
    if with_grad:
        # The backward sums every rank's gradient for this rank's slice (reduce-scatter).
        return torch.cat(dist_fn.all_gather(features), dim=0)
    chunks = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(chunks, features.contiguous())
    if not local:
        # Keep the autograd path through this rank's own slice (open_clip does the same).
        chunks[rank] = features
    return torch.cat(chunks, dim=0)


class ContrastiveLoss(nn.Module):
    """CLIP loss: mean of image->text and text->image cross entropy over the batch.

    Args:
        local_loss: score local rows against all gathered columns (memory O(B * B * world))
            instead of the full global matrix on every rank.
        gather_with_grad: gather features with gradient, so negatives from other ranks
            also train this rank's towers (required for exact parity with 1 process).
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def _single(
        self, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        rank, world_size = get_rank(), get_world_size()
        n = image_features.shape[0]
        labels = torch.arange(n, device=image_features.device)
        if world_size == 1:
            logits_per_image = scale * image_features @ text_features.T  # (B, B)
            logits_per_text = logits_per_image.T
        else:
            all_image = _gather(
                image_features, rank, world_size, self.gather_with_grad, self.local_loss
            )
            all_text = _gather(
                text_features, rank, world_size, self.gather_with_grad, self.local_loss
            )
            if self.local_loss:
                logits_per_image = scale * image_features @ all_text.T  # (B, B * world)
                logits_per_text = scale * text_features @ all_image.T  # (B, B * world)
                labels = labels + n * rank
            else:
                logits_per_image = scale * all_image @ all_text.T  # (B * world, B * world)
                logits_per_text = logits_per_image.T
                labels = torch.arange(n * world_size, device=image_features.device)
        return 0.5 * (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        text_features_2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contrastive loss of L2-normalised embeddings.

        Args:
            image_features: (B, E), L2-normalised.
            text_features: (B, E), L2-normalised.
            logit_scale: (1,) already exponentiated temperature; clamped to at most 100.
            text_features_2: optional (B, E) second caption view (e.g. a synthetic caption
                next to the alt text); the loss is then the mean over the two views.

        Returns:
            () scalar loss.
        """
        scale = logit_scale.clamp(max=MAX_LOGIT_SCALE)
        loss = self._single(image_features, text_features, scale)
        if text_features_2 is not None:
            loss = 0.5 * (loss + self._single(image_features, text_features_2, scale))
        return loss
