"""A tiny OpenVision 3 LLaVA for tests: the random ``ov3-mu`` encoder with a tiny random VAE,
a 2-layer random Llama and the synthetic world's word-level tokenizer, at 32 px (4 image
tokens)."""

from __future__ import annotations

from openvision3.understanding.tiny import mu_openvision3, tiny_vlm


def tiny(template: str = "vicuna_v1_short", image_size: int = 32):
    """(vlm, processor, ov3)."""
    ov3 = mu_openvision3()
    vlm, processor = tiny_vlm(ov3, image_size=image_size, template=template)
    return vlm, processor, ov3
