"""``OpenVision3Autoencoder``: the OpenVision 3 tokenizer as a diffusers autoencoder, with the
conventions of diffusers' ``AutoencoderRAE`` (``models/autoencoders/autoencoder_rae.py``).

    encode(x).latent : images (B, 3, H, W) in [-1, 1] -> normalised tokens (B, D, h, w)
    decode(z).sample : (B, D, h, w) -> images (B, 3, H, W), the VAE's output, roughly [-1, 1]

Differences from ``AutoencoderRAE``, which a caller must know:

- Pixel range: images in [-1, 1], the convention of ``AutoencoderKL`` and of the FLUX VAE that
  reads them (``AutoencoderRAE`` takes [0, 1] and applies ImageNet's mean / std inside); decode
  returns the VAE's unclamped output in [-1, 1], which ``VaeImageProcessor.postprocess`` maps to
  [0, 1]. No resizing: H and W must be multiples of 16 (VAE x 8, patch 2), and a stored
  statistics grid fixes them.
- Normalisation: per position and channel by the token statistics of the generator's training
  set, ``(z - mean) / sqrt(var + eps)`` with eps = 1e-5 (RAE's ``src/stage1/rae.py``);
  ``AutoencoderRAE`` uses ``(z - mean) / (std + eps)`` then ``scaling_factor``. There is no
  scaling factor here. An autoencoder without statistics (``has_stats=False``) returns the raw
  tokens.
- Encoding is deterministic (the VAE posterior's mean, the decoder runs without its training
  noise), as ``openvision3.load(...).encode`` / ``.decode``.

The module holds the diffusers ``AutoencoderKL`` itself (``vae``), the OpenVision 3 encoder and
decoder (``model``, text towers dropped), and the statistics as buffers; all in one
``diffusion_pytorch_model.safetensors``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders import AutoencoderKL
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from openvision3.data.token_stats import EPS, denormalize, normalize
from openvision3.dataclass_io import from_dict, to_dict
from openvision3.models.openvision3 import ModelConfig, OpenVision3
from openvision3.models.vae import FrozenVAE, VAEConfig


def autoencoder_model_config(cfg: ModelConfig, vae_arch: dict | None = None) -> dict:
    """An OpenVision 3 model config reduced to the autoencoder: no text towers, the VAE built
    from ``vae_arch`` (the loaded VAE's own ``AutoencoderKL`` arguments; default the config's
    ``arch``), its weights traveling in this model's safetensors."""
    d = to_dict(cfg)
    d["text"] = d["caption"] = None
    arch = dict(d["vae"]["arch"] if vae_arch is None else vae_arch)
    d["vae"] = {**d["vae"], "pretrained": "", "subfolder": "", "arch": arch}
    return d


def vae_arch(autoencoder) -> dict:
    """The ``AutoencoderKL`` keyword arguments of a loaded VAE (its diffusers config, less the
    bookkeeping keys): a VAE read from a hub id or folder need not have the config's ``arch``."""
    return {k: v for k, v in dict(autoencoder.config).items() if not k.startswith("_")}


class OpenVision3Autoencoder(ModelMixin, ConfigMixin):
    """OpenVision 3's tokenizer (FLUX VAE -> ViT -> unified tokens -> decoder -> VAE) as a
    diffusers autoencoder; see the module doc for the pixel range and the normalisation.

    Config: ``ov3_config`` (an OpenVision 3 ``ModelConfig`` as a dict, see
    ``autoencoder_model_config``), ``token_grid`` (h, w) of the statistics, ``has_stats``.
    """

    __module__ = "openvision3.diffusers"  # the path diffusers records in model_index.json
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        ov3_config: dict | None = None,
        token_grid: tuple[int, int] = (16, 16),
        has_stats=False,
    ):
        super().__init__()
        cfg = from_dict(ModelConfig, ov3_config or {})
        if cfg.decoder is None:
            raise ValueError("an OpenVision 3 autoencoder needs the reconstruction decoder")
        if cfg.vae.kind != "autoencoder":
            raise ValueError("an OpenVision 3 autoencoder needs a VAE (vae.kind='autoencoder')")
        self.vae = AutoencoderKL(**cfg.vae.arch)
        self.model = OpenVision3(cfg, vae=None)  # encoder + decoder; the VAE is self.vae
        # The latent convention (scale, shift) is FrozenVAE's alone: a view over self.vae that
        # is no submodule (its state-dict hooks would drop the VAE's weights from the save).
        self.__dict__["_frozen"] = FrozenVAE(VAEConfig(**to_dict(cfg.vae)), autoencoder=self.vae)
        d, (h, w) = cfg.encoder.width, token_grid
        self.register_buffer("latents_mean", torch.zeros(d, h, w))  # (D, h, w)
        self.register_buffer("latents_var", torch.ones(d, h, w) - EPS)  # (D, h, w)
        self.requires_grad_(False)

    @classmethod
    def from_openvision3(
        cls, model: OpenVision3, stats: dict | None = None, token_grid=None
    ) -> OpenVision3Autoencoder:
        """An ``OpenVision3`` with decoder and VAE, plus optional statistics {"mean", "var"}
        (D, h, w) -> this autoencoder with copies of their weights."""
        if model.vae is None or model.decoder is None:
            raise ValueError("the OpenVision 3 model needs its VAE and decoder")
        if stats is not None:
            token_grid = tuple(stats["mean"].shape[1:])
        grid = tuple(token_grid or model.cfg.encoder.pos_grid)
        config = autoencoder_model_config(model.cfg, vae_arch(model.vae.vae))
        out = cls(config, token_grid=grid, has_stats=stats is not None)
        out.vae.load_state_dict(model.vae.vae.state_dict())
        missing = out.model.load_state_dict(model.state_dict(), strict=False)
        drop = ("text.", "captioner.", "logit_scale")
        if missing.missing_keys or [k for k in missing.unexpected_keys if not k.startswith(drop)]:
            raise ValueError(f"weights do not match: {missing}")
        if stats is not None:
            out.latents_mean.copy_(stats["mean"])
            out.latents_var.copy_(stats["var"])
        return out.to(next(model.parameters()).device).eval()

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        """{"mean", "var"} (D, h, w), the normalisation statistics."""
        return {"mean": self.latents_mean, "var": self.latents_var}

    def openvision3(self) -> OpenVision3:
        """An ``OpenVision3`` sharing this autoencoder's modules (encoder, decoder, VAE)."""
        model = OpenVision3(self.model.cfg, vae=self._frozen)
        model.encoder, model.decoder = self.model.encoder, self.model.decoder
        return model.eval()

    def _check_grid(self, h: int, w: int) -> None:
        if self.config.has_stats and (h, w) != tuple(self.config.token_grid):
            raise ValueError(
                f"token grid {(h, w)} differs from the statistics' {tuple(self.config.token_grid)}"
                f": images must be {self.config.token_grid[0] * self.model.cfg.pixel_patch} px"
            )

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple:
        """Images (B, 3, H, W) in [-1, 1] -> ``EncoderOutput(latent=(B, D, H/16, W/16))``."""
        latents = self._frozen.encode(x)  # (B, 3, H, W) -> (B, C, H/8, W/8)
        tokens = self.model.encoder(latents)  # -> (B, N, D)
        h, w = self.model.encoder.grid(latents.shape[-2:])
        self._check_grid(h, w)
        z = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)  # (B, D, h, w)
        if self.config.has_stats:
            z = normalize(z, self.stats)
        return EncoderOutput(latent=z) if return_dict else (z,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Normalised tokens (B, D, h, w) -> ``DecoderOutput(sample=(B, 3, 16h, 16w))``, the
        VAE's output (roughly [-1, 1], unclamped)."""
        b, d, h, w = z.shape
        self._check_grid(h, w)
        if self.config.has_stats:
            z = denormalize(z, self.stats)
        tokens = z.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
        latents = self.model.decoder(tokens, (h, w), noise=False)  # -> (B, C, 2h, 2w)
        images = self._frozen.decode(latents)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Images -> reconstructions (``encode`` then ``decode``)."""
        images = self.decode(self.encode(sample).latent).sample
        return DecoderOutput(sample=images) if return_dict else (images,)
