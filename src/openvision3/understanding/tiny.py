"""Tiny LLaVA models built offline: a random-init Llama with a word-level tokenizer on an
OpenVision 3 tower (the demo's and the smoke presets'), through the same ``assemble`` as real
checkpoints."""

from __future__ import annotations

import dataclasses

import torch

from openvision3.understanding.assemble import assemble
from openvision3.understanding.synthetic_vqa import vocabulary
from openvision3.understanding.tiny_lm import tiny_llama, word_tokenizer
from openvision3.understanding.tower import OpenVision3VisionModel


def mu_openvision3():
    """The random ``ov3-mu`` encoder with a tiny random VAE (tests, smoke presets)."""
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.models.presets import model_config
    from openvision3.models.vae import TINY_VAE_ARCH, VAEConfig

    cfg = dataclasses.replace(
        model_config("ov3-mu"),
        decoder=None,
        text=None,
        caption=None,
        vae=VAEConfig(pretrained="", arch=dict(TINY_VAE_ARCH)),
    )
    return OpenVision3(cfg).eval()


def tiny_vlm(
    ov3=None,
    image_size: int = 32,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    template: str = "vicuna_v1_short",
    seed: int = 0,
):
    """(vlm, processor): ``ov3`` (default: a random ``ov3-mu``) as the tower, a random Llama
    over the synthetic world's words; deterministic in ``seed``, the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ov3 = ov3 if ov3 is not None else mu_openvision3()
        tok = word_tokenizer(vocabulary())
        tower = OpenVision3VisionModel.from_openvision3(ov3, image_size)
        lm = tiny_llama(len(tok), hidden, layers, heads)
        return assemble(tower, lm, tok, template=template)
