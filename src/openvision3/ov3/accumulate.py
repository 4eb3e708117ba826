"""OpenVision 3's gradient accumulation: it keeps the contrastive negatives over the whole
accumulated batch (the generic pieces are in ``train/accumulate.py``).

With ``accum_steps = k`` a rank's batch of B samples runs as k micro-batches of B / k, and the
gradient equals the one of the whole batch (open_clip's ``accum_freq`` algorithm):

  pass 1  (no grad) image and text embeddings of every micro-batch, cached: (B, E) each;
  pass 2  for each micro-batch j, with grad: forward, put its fresh embeddings into slice j
          of the cached ones, and backprop the contrastive loss over all B rows (only
          slice j carries a gradient; the others are constants) plus the micro-batch's own
          losses, weighted as their share of the big-batch mean.

Summed over j this is the big batch's gradient: d/dz_j of the contrastive loss for each
slice, the reconstruction mean as 1/k of each micro mean, the caption token mean weighted by
each micro-batch's share of the caption tokens. The temperature gets its gradient from the
last micro-batch only (open_clip adds it k times). Gradient sync (DDP ``no_sync``, FSDP2
``set_requires_gradient_sync``) is off for all but the last micro-batch.

Randomness: each micro-batch gets its own random stream, seeded from the global generator
(one host-side draw of k seeds per step, no device sync; resume stays exact), and both of its
passes run from the start of that stream. The towers that produce the embeddings run first in
the forward, so any random op in them draws the same numbers in both passes; decoder noise and
caption token dropping follow in pass 2 only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from openvision3.train.accumulate import micro_seeds, no_grad_sync, random_stream, split_batch

EMBED_KEYS = ("image_embeds", "text_embeds", "text_embeds_2")


def caption_shares(micro: list[dict], pad_id: int) -> list[torch.Tensor]:
    """Each micro-batch's share of the caption target tokens (ids[:, 1:] not padding), on
    the device: the weights that turn micro token means into the big batch's token mean."""
    counts = torch.stack([(mb["caption"][:, 1:] != pad_id).sum() for mb in micro]).float()
    return list(counts / counts.sum())


@torch.no_grad()
def cache_embeddings(
    model, vae, micro: list[dict], seeds: list[int], device: torch.device, autocast: Callable
) -> list[dict]:
    """Pass 1: each micro-batch's contrastive embeddings, (B / k, E) each, without grad.

    Also encodes the VAE latents of micro-batches that carry only images (into the dicts),
    so pass 2 does not run the VAE encoder a second time.
    """
    cached = []
    for mb, seed in zip(micro, seeds):
        with random_stream(seed, device), autocast():
            if "latents" not in mb:
                mb["latents"] = vae.encode(mb["images"])  # (b, C, h, w)
            out = model(mb, reconstruction=False, contrastive=True, caption=False)
        cached.append({k: out[k] for k in EMBED_KEYS if k in out})
    return cached


def forward_backward(
    train_model: nn.Module,
    model: nn.Module,
    objective: nn.Module,
    batch: dict,
    accum_steps: int,
    branches: dict,
    autocast: Callable,
) -> dict[str, torch.Tensor]:
    """Forward and backward of one optimizer step over ``batch`` (this rank's share of the
    global batch), in ``accum_steps`` micro-batches. Gradients are accumulated into ``.grad``
    (zero them before). ``train_model`` is the module to call (maybe DDP/FSDP-wrapped),
    ``model`` the bare ``OpenVision3``; ``branches`` are the forward's keyword arguments.

    Returns the step's terms as detached () device tensors, equal to the whole batch's;
    ``terms["loss"]`` is NaN when any loss that was backpropagated was not finite.
    """
    if accum_steps == 1:
        with autocast():
            loss, terms = objective(train_model(batch, **branches))
        loss.backward()
        return {**terms, "loss": loss.detach()}
    k = accum_steps
    micro = split_batch(batch, k)
    seeds = micro_seeds(k)
    device = next(v for v in batch.values() if torch.is_tensor(v)).device
    cached = None
    if branches.get("contrastive"):
        cached = cache_embeddings(train_model, model.vae, micro, seeds, device, autocast)
    shares = None
    if branches.get("caption"):
        shares = caption_shares(micro, model.cfg.caption.pad_id)
    sums: dict[str, torch.Tensor] = {}
    finite = True
    for j, mb in enumerate(micro):
        last = j == k - 1
        with contextlib.nullcontext() if last else no_grad_sync(train_model):
            with random_stream(seeds[j], device), autocast():
                out = train_model(mb, **branches)
                if cached is not None:
                    for key in cached[j]:  # (B, E): slice j fresh, the rest constants
                        rest = [c[key] for c in cached]
                        out[key] = torch.cat(rest[:j] + [out[key]] + rest[j + 1 :])
                    if not last:  # the temperature's gradient once, not k times
                        out["logit_scale"] = out["logit_scale"].detach()
                scales = {"rec": 1.0 / k}
                if shares is not None:
                    scales["caption"] = shares[j]
                loss, terms = objective(out, scales)
            loss.backward()
        finite = torch.isfinite(loss.detach()) & finite
        for key, v in terms.items():
            w = shares[j] if key == "caption" else 1.0 / k
            sums[key] = sums[key] + w * v if key in sums else w * v
    und, total = objective.combine(
        {name: v for name, v in sums.items() if name in ("rec", "contrastive", "caption")}
    )
    if und is not None:
        sums["und"] = und
    sums["loss"] = torch.where(finite, total, torch.full_like(total, float("nan")))
    return sums
