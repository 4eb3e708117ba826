"""Tiny LLaVA models built offline: a random-init Llama with a word-level tokenizer on an
OpenVision 3 tower (the demo's and the smoke presets'), through the same ``assemble`` as real
checkpoints."""

from __future__ import annotations

import dataclasses

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from openvision3.understanding.assemble import assemble, word_tokenizer
from openvision3.understanding.synthetic_vqa import vocabulary
from openvision3.understanding.tower import OpenVision3VisionModel


def tiny_llama(vocab_size: int, hidden: int = 128, layers: int = 3, heads: int = 4):
    """A random Llama (0.81M parameters at 128 x 3 with a 64-word vocabulary)."""
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=1024,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=1,
        )
    )


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
