"""FrozenVAE: the frozen image autoencoder in front of the encoder (FLUX.1 VAE in the paper).

This file is the ONLY place where the latent scaling and shift are applied.
Conventions (``VAEConfig.convention``):
  - ``"ov3"`` (default, the authors' released inference recipe): ``z = mean * 0.3611`` (no shift);
  - ``"flux"`` (FLUX.1's own): ``z = (mean - 0.1159) * 0.3611``.
The frozen weights never enter our checkpoints: they come from their own source (hub id, local
folder, or a ``vae/`` sub-folder written by ``save_pretrained`` for VAEs built from a config).
diffusers is imported lazily so that importing the package stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from openvision3.errors import MissingWeightsError  # noqa: F401  (raised here; imported from here)

FLUX_VAE_ID = "black-forest-labs/FLUX.1-dev"

# VAEs shipped inside the package (name -> folder), e.g. the small VAE of the offline demo,
# trained on the synthetic world by `ov3 train-vae` (see ov3/assets/demo_vae/training.json).
PACKAGED_VAES = {
    "ov3-demo-vae": os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "ov3", "assets", "demo_vae"
    )
}

# diffusers AutoencoderKL arguments of the FLUX.1 VAE (83.8M parameters).
FLUX_VAE_ARCH: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# Tiny VAE with the same interface (8x down, 16 channels), ~27k parameters; for tests.
TINY_VAE_ARCH: dict[str, Any] = dict(
    FLUX_VAE_ARCH, block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4
)


@dataclass
class VAEConfig:
    """Where the frozen VAE comes from and how its latents are scaled.

    `pretrained`: hub id or local folder (diffusers layout) or a BFL single-file
    `ae.safetensors`; empty = build from `arch` (random weights; tests, or saved beside a model).
    `kind`: "autoencoder", or "pixels": no VAE at all, the "latents" are the images themselves
    (3 channels, no downsampling); the pixel ViT of the paper's section 5 (`pixel_space()`).
    """

    # hub id, diffusers folder or BFL ae.safetensors; "" = built from arch
    pretrained: str = FLUX_VAE_ID
    subfolder: str = "vae"  # the VAE's subfolder of a hub repo or folder
    # ov3: z = mean * scale (released recipe) | flux: z = (mean - shift) * scale
    convention: str = "ov3"
    scaling_factor: float = 0.3611  # latent scale (FLUX.1: 0.3611)
    shift_factor: float = 0.1159  # latent shift of the flux convention (FLUX.1: 0.1159)
    sample_posterior: bool = False  # draw latents from the posterior instead of taking its mean
    # diffusers AutoencoderKL keyword arguments; used when pretrained is empty
    arch: dict = field(default_factory=lambda: dict(FLUX_VAE_ARCH))
    kind: str = "autoencoder"

    def __post_init__(self):
        if self.kind not in ("autoencoder", "pixels"):
            raise ValueError(f"vae.kind must be 'autoencoder' or 'pixels', got {self.kind!r}")
        if self.convention not in ("ov3", "flux"):
            raise ValueError(f"vae.convention must be 'ov3' or 'flux', got {self.convention!r}")
        if self.scaling_factor <= 0:
            raise ValueError("vae.scaling_factor must be positive")

    @property
    def latent_channels(self) -> int:
        if self.kind == "pixels":
            return 3
        return int(self.arch.get("latent_channels", 16))

    @property
    def downsample(self) -> int:
        if self.kind == "pixels":
            return 1
        return 2 ** (len(self.arch.get("block_out_channels", [0] * 4)) - 1)


def pixel_space() -> VAEConfig:
    """No VAE: the encoder reads pixels and the decoder predicts them (scale 1, no shift)."""
    return VAEConfig(pretrained="pixels", subfolder="", scaling_factor=1.0, arch={}, kind="pixels")


def _missing_vae_message(source: str, subfolder: str, err: Exception) -> str:
    return (
        f"Could not load the VAE from {source!r} (subfolder {subfolder!r}): {err.__class__.__name__}.\n"
        "The FLUX.1 VAE is gated on the Hugging Face Hub and this machine may be offline. Either\n"
        "  1. accept the licence at https://huggingface.co/black-forest-labs/FLUX.1-dev and run\n"
        "     `huggingface-cli download black-forest-labs/FLUX.1-dev --include 'vae/*' --local-dir <DIR>`,\n"
        "     then point the config at it: `model.vae.pretrained=<DIR>` (subfolder 'vae'); or\n"
        "  2. pass a local diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)\n"
        "     or BFL's single-file `ae.safetensors`."
    )


def build_autoencoder(cfg: VAEConfig) -> nn.Module:
    """Instantiate the diffusers ``AutoencoderKL`` described by ``cfg`` (weights included)."""
    if cfg.kind == "pixels":
        return nn.Identity()
    from diffusers import AutoencoderKL

    if not cfg.pretrained:
        return AutoencoderKL(**cfg.arch)
    source = PACKAGED_VAES.get(cfg.pretrained, cfg.pretrained)
    if cfg.pretrained in PACKAGED_VAES and not os.path.isfile(os.path.join(source, "config.json")):
        raise MissingWeightsError(
            f"the packaged VAE {cfg.pretrained!r} is missing from {source}; rebuild it with `ov3 train-vae`"
        )
    try:
        if os.path.isfile(source) and source.endswith((".safetensors", ".ckpt")):
            # BFL's single-file checkpoint: diffusers converts its keys to the diffusers layout.
            return AutoencoderKL.from_single_file(source, config=None, **_single_file_kwargs(cfg))
        sub = cfg.subfolder
        if os.path.isdir(source) and sub and not os.path.isdir(os.path.join(source, sub)):
            sub = None  # a local folder that is the VAE itself
        return AutoencoderKL.from_pretrained(source, subfolder=sub or None, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:  # diffusers raises OSError / EnvironmentError offline
        raise MissingWeightsError(_missing_vae_message(source, cfg.subfolder, err)) from None


def _single_file_kwargs(cfg: VAEConfig) -> dict:
    arch = dict(cfg.arch)
    keep = (
        "latent_channels",
        "block_out_channels",
        "layers_per_block",
        "scaling_factor",
        "shift_factor",
    )
    return {k: arch[k] for k in keep if k in arch}


class FrozenVAE(nn.Module):
    """Frozen ``AutoencoderKL`` with the project's latent convention.

    ``encode``: images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/8, W/8), no gradient.
    ``decode``: latents -> images; gradients flow to the latents through the frozen decoder
    (the pixel losses train the encoder through it).
    """

    def __init__(self, cfg: VAEConfig, autoencoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.vae = autoencoder if autoencoder is not None else build_autoencoder(cfg)
        self.vae.requires_grad_(False)
        self.vae.eval()
        # Frozen weights stay out of our state dicts (they are loaded from their own source).
        self.register_state_dict_post_hook(_drop_own_keys)
        self.register_load_state_dict_pre_hook(_fill_own_keys)

    @classmethod
    def from_pretrained(cls, id_or_dir: str = FLUX_VAE_ID, **kwargs) -> FrozenVAE:
        return cls(VAEConfig(pretrained=id_or_dir, **kwargs))

    @classmethod
    def from_config(cls, arch: dict | None = None, **kwargs) -> FrozenVAE:
        return cls(VAEConfig(pretrained="", arch=dict(arch or TINY_VAE_ARCH), **kwargs))

    def train(self, mode: bool = True) -> FrozenVAE:
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode
        return self

    @property
    def shift(self) -> float:
        return self.cfg.shift_factor if self.cfg.convention == "flux" else 0.0

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/8, W/8); the images themselves for
        ``kind="pixels"``."""
        if self.cfg.kind == "pixels":
            return images
        dist = self.vae.encode(images).latent_dist
        z = dist.sample(generator) if self.cfg.sample_posterior else dist.mean
        return (z - self.shift) * self.cfg.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, 8h, 8w), roughly in [-1, 1]."""
        if self.cfg.kind == "pixels":
            return latents
        z = latents / self.cfg.scaling_factor + self.shift
        return self.vae.decode(z).sample

    def save_pretrained(self, path: str) -> None:
        """Write the autoencoder in the diffusers layout (config.json + safetensors)."""
        self.vae.save_pretrained(path, safe_serialization=True)


def _drop_own_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    own = dict(module.vae.named_parameters(prefix=prefix + "vae"))
    own.update(module.vae.named_buffers(prefix=prefix + "vae"))
    for key, tensor in own.items():
        state_dict.setdefault(key, tensor.detach())
