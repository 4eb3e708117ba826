"""RAE-style generation on the unified tokens: a DiT-DH trained with flow matching on cached,
normalised OpenVision 3 tokens, sampled with guidance and decoded to pixels by OpenVision 3's
decoder. ``load_generator`` is the front door; nothing heavy is imported here."""

from __future__ import annotations


def load_generator(path: str, device: str = "cpu", decoder: str = "", guide: str = ""):
    """A trained generator export -> ``Generator`` (see ``generation/pipeline.py``)."""
    from openvision3.generation.pipeline import load_generator as _load

    return _load(path, device=device, decoder=decoder, guide=guide)


__all__ = ["load_generator"]
