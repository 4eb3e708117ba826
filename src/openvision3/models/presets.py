"""Model presets. The number after the slash is the patch size on the latents.

Encoders use the usual ViT sizes as width/depth/heads (S 384/12/6, B 768/12/12, L 1024/24/16,
So400m 1152/27/16, H 1280/32/16); text towers follow OpenVision-1 (B: 512/12/8, L: 768/12/12);
the decoder is B/1 for every size (the paper chose B/1: L/1 was unstable). ``ov3-mu`` is a tiny
model with a tiny random VAE for tests.
"""

from __future__ import annotations

import dataclasses

from openvision3.models.caption import CaptionDecoderConfig
from openvision3.models.decoder import DecoderConfig
from openvision3.models.encoder import EncoderConfig
from openvision3.models.openvision3 import ModelConfig
from openvision3.models.text import TextEncoderConfig
from openvision3.models.vae import TINY_VAE_ARCH, VAEConfig, pixel_space

# name: (width, depth, heads, embed_dim, text (width, depth, heads), caption (width, depth, heads))
_SIZES = {
    "S": (384, 12, 6, 384, (384, 12, 6), (384, 6, 6)),
    "B": (768, 12, 12, 512, (512, 12, 8), (512, 12, 8)),
    "L": (1024, 24, 16, 768, (768, 12, 12), (768, 12, 12)),
    "So400m": (1152, 27, 16, 1152, (1024, 16, 16), (768, 12, 12)),
    "H": (1280, 32, 16, 1024, (1024, 24, 16), (768, 12, 12)),
}


def _preset(size: str, patch: int) -> ModelConfig:
    width, depth, heads, embed, (tw, td, th), (cw, cd, ch) = _SIZES[size]
    return ModelConfig(
        encoder=EncoderConfig(
            patch_size=patch, width=width, depth=depth, heads=heads, embed_dim=embed
        ),
        decoder=DecoderConfig(width=768, depth=12, heads=12),
        text=TextEncoderConfig(width=tw, depth=td, heads=th, embed_dim=embed),
        caption=CaptionDecoderConfig(width=cw, depth=cd, heads=ch, image_width=width),
        vae=VAEConfig(),
        name=f"ov3-{size}/{patch}",
    )


def _mu() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(width=32, depth=2, heads=2, embed_dim=16),
        decoder=DecoderConfig(width=32, depth=2, heads=2),
        text=TextEncoderConfig(width=32, depth=2, heads=2, embed_dim=16, context_length=32),
        caption=CaptionDecoderConfig(width=32, depth=2, heads=2, image_width=32, context_length=32),
        vae=VAEConfig(pretrained="", arch=dict(TINY_VAE_ARCH)),
        name="ov3-mu",
    )


def pixel_vit(model: ModelConfig) -> ModelConfig:
    """The pixel-ViT twin of a latent model (the paper's section 5 ablation): no VAE, the
    encoder patchifies pixels with patch ``model.pixel_patch`` (16 for FLUX + patch 2) and the
    decoder predicts pixels; same token grid, widths and heads."""
    p = model.pixel_patch
    return dataclasses.replace(
        model,
        encoder=dataclasses.replace(model.encoder, in_channels=3, patch_size=p),
        vae=pixel_space(),
        name=f"{model.name}-pixel{p}" if model.name else f"pixel{p}",
    )


PRESETS = {"ov3-mu": _mu}
PRESETS.update({f"ov3-{s}/2": (lambda s=s: _preset(s, 2)) for s in _SIZES})


def model_config(name: str) -> ModelConfig:
    """A fresh ``ModelConfig`` for a preset name (``ov3-mu``, ``ov3-S/2``, ``ov3-B/2``, ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
