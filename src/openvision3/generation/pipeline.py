"""``load_generator(path)``: a trained DiT-DH export plus the OpenVision 3 decoder -> images.

    from openvision3.generation import load_generator
    gen = load_generator("runs/dit/final", device="cuda")   # or openvision3.load(...)
    images = gen.sample([0, 1, 2], cfg_scale=3.0, steps=50, seed=0)   # (3, 3, H, W) in [-1, 1]
    openvision3.to_pil(images)[0].save("sample.png")

Sampling path: noise -> DiT-DH (Euler / Heun, guidance) -> normalised tokens -> denormalise
with the training statistics -> OpenVision 3 decoder (no noise) -> VAE decoder -> pixels in
[-1, 1], the range of every image this package returns. The noise of sample i of a call is
seeded by ``seed_of(seed, i)``, so a batch split never changes it.
"""

from __future__ import annotations

import json
import os

import torch

from openvision3.data.token_stats import denormalize, load_token_stats
from openvision3.dataclass_io import from_dict
from openvision3.errors import ConfigError, MissingWeightsError
from openvision3.generation.models import DiTDH
from openvision3.generation.sampler import SamplerConfig, sample_tokens
from openvision3.generation.task import STATS_NAME, GenerationConfig, grid_tokens, seed_of


def sample_noise(seed: int, ids, shape, device) -> torch.Tensor:
    """(len(ids), *shape) noise, sample i's drawn from a generator seeded by ``seed_of(seed, i)``."""
    gen = torch.Generator()
    out = []
    for i in ids:
        gen.manual_seed(seed_of(seed, int(i)))
        out.append(torch.randn(tuple(shape), generator=gen))
    return torch.stack(out).to(device)


class Generator:
    """A DiT-DH, its token statistics and a decoder (an ``OpenVision3`` with decoder and VAE)."""

    def __init__(self, model: DiTDH, stats: dict, decoder, cfg: GenerationConfig, guide=None):
        self.model, self.stats, self.decoder, self.cfg = model.eval(), stats, decoder.eval(), cfg
        self.guide = guide.eval() if guide is not None else None
        self.device = next(model.parameters()).device
        m = cfg.model
        self.shape = (m.in_channels, m.input_size, m.input_size)
        self.shift = cfg.flow.factor(self.shape)
        names = cfg.class_names or []
        self.class_names = [
            names[i] if i < len(names) and names[i] else str(i) for i in range(m.num_classes)
        ]

    def tokens(
        self,
        labels,
        *,
        cfg_scale=1.0,
        steps=50,
        sampler="euler",
        seed=0,
        ids=None,
        interval=(0.0, 1.0),
        guidance="cfg",
    ) -> torch.Tensor:
        """Labels (B,) -> denormalised unified tokens (B, N, D). ``ids``: the samples' numbers
        (default 0..B-1), which seed their noise with ``seed``; ``sampler``: euler | heun;
        ``guidance``: cfg | autoguidance (needs a guide) with scale ``cfg_scale`` on
        ``interval`` = (t_min, t_max)."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        ids = range(len(labels)) if ids is None else ids
        noise = sample_noise(seed, ids, self.shape, self.device)
        scfg = SamplerConfig(
            steps=steps, method=sampler, guidance=guidance, scale=cfg_scale, interval=interval
        )
        z = sample_tokens(self.model, labels, noise, scfg, self.shift, self.guide)
        return grid_tokens(denormalize(z.float(), self.stats))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, D) -> images (B, 3, H, W) in [-1, 1] (clamped), float32, through the
        OpenVision 3 decoder (clean tokens: it is in eval mode) and its VAE."""
        grid = (self.cfg.model.input_size, self.cfg.model.input_size)
        return self.decoder.decode(tokens, grid).float().clamp(-1, 1)

    @torch.no_grad()
    def sample(self, labels, *, cfg_scale=1.0, steps=50, sampler="euler", seed=0, **kw):
        """Labels (B,) -> images (B, 3, H, W) in [-1, 1]; see ``tokens`` for the options.
        ``openvision3.to_pil`` turns them into PIL images."""
        return self.decode(
            self.tokens(labels, cfg_scale=cfg_scale, steps=steps, sampler=sampler, seed=seed, **kw)
        )


def _read_model(path: str, device) -> tuple[DiTDH, GenerationConfig, dict, dict]:
    from safetensors.torch import load_file

    meta = json.loads(open(os.path.join(path, "config.json")).read())
    cfg = from_dict(GenerationConfig, meta["config"])
    model = DiTDH(cfg.model)
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")))  # strict
    stats = load_token_stats(os.path.join(path, STATS_NAME))
    return model.to(device), cfg, stats, meta


def load_generator(path: str, device: str = "cpu", decoder: str = "", guide: str = "") -> Generator:
    """A generator export (``run/final``), or its diffusers folder (``ov3 export --format
    diffusers``), -> ``Generator``. ``decoder``: the OpenVision 3 export with the decoder
    ("" = the one recorded at training); ``guide``: a second (smaller or earlier) generator
    export for AutoGuidance."""
    from openvision3.artefacts import (
        DIFFUSERS_PIPELINE,
        GENERATOR,
        folder_kind,
        loader,
        require_kind,
    )
    from openvision3.pretrained import load_pretrained

    if not (decoder or guide) and folder_kind(path).name == DIFFUSERS_PIPELINE:
        return loader(DIFFUSERS_PIPELINE)(path, device)  # ``ov3 export --format diffusers``
    for folder in (path, guide) if guide else (path,):  # one line for a folder of another kind
        require_kind(folder, GENERATOR)
    model, cfg, stats, meta = _read_model(path, device)
    source = decoder or meta.get("decoder") or ""
    if not decoder and os.path.isdir(os.path.join(path, source)):
        source = os.path.join(path, source)  # recorded relative to the export
    if not source:
        raise ConfigError("this generator records no decoder: pass decoder=<OpenVision 3 export>")
    ov3 = load_pretrained(source, device=device)
    if ov3.decoder is None:
        raise MissingWeightsError(
            f"{source!r} has no reconstruction decoder; for a released encoder train one with "
            "the `decoder_b2` preset and pass its export as decoder="
        )
    weak = _read_model(guide, device)[0] if guide else None
    return Generator(model, stats, ov3, cfg, weak)
