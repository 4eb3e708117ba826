"""The frozen demo model's unified tokens of synthetic scenes, in the feature cache
(``data/latents.py``): what the generation and understanding demos train on."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch

from openvision3.demo.synthetic import SyntheticConfig


def cache_demo_tokens(
    model,
    synthetic: SyntheticConfig,
    out: str,
    resolution: int,
    train: int,
    val: int = 0,
    extra: Callable[[str], dict] | None = None,
) -> str:
    """Tokens (no pixel targets, no flips) of the first ``train`` train and ``val`` val scenes
    of ``synthetic``'s world at ``resolution`` into ``out``; a split already cached is kept
    (the cache writer resumes an interrupted one). ``extra(key)``: more JSON per sample."""
    from openvision3.data.latents import CacheLatentsConfig, write_latent_cache
    from openvision3.data.loader import DataConfig

    syn = dataclasses.replace(synthetic, train_size=train, val_size=val or synthetic.val_size)
    for split, size in (("train", train), ("val", val)):
        if not size or os.path.exists(os.path.join(out, f"{split}-000.json")):
            continue
        cfg = CacheLatentsConfig(
            out=out, split=split, resolution=resolution, flip=False, images=False,
            batch_size=64, shard_size=1024, device="cpu",
            data=DataConfig(source="synthetic", synthetic=syn),
        )  # fmt: skip
        with torch.no_grad():
            write_latent_cache(cfg, vae=model.vae, encoder=model.encoder, extra=extra)
    return out
