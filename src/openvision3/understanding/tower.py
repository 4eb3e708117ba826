"""OpenVision 3 as a transformers vision tower: ``OpenVision3VisionConfig`` and
``OpenVision3VisionModel`` (``model_type = "openvision3_vision"``).

The tower is the frozen VAE plus the ViT encoder. It takes pixel values in [-1, 1] (a
``LlavaImageProcessor`` with mean = std = 0.5) and returns CLIP's output convention, which is
what ``LlavaModel.get_image_features`` reads: ``hidden_states`` has depth + 1 entries, entry 0
the embedding output and entry k the output of block k, each with the CLS row first, so
``vision_feature_layer=-1`` with the ``"default"`` strategy (drop the CLS) selects exactly the
unified tokens of ``OpenVision3.encode``. LLaVA-1.5's CLIP tower reads -2; the layer is a field
of the LLaVA config.

The VAE's weights are part of the tower's state dict, so a saved VLM is self-contained, and
``_keep_in_fp32_modules_strict`` keeps the VAE in fp32 when the model is loaded in bf16 (it
also runs outside autocast). Importing ``openvision3.understanding`` registers both classes with
``AutoConfig`` / ``AutoModel``; ``LlavaForConditionalGeneration.from_pretrained`` then needs no
``trust_remote_code``.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from openvision3.dataclass_io import from_dict, to_dict
from openvision3.models.encoder import Encoder, EncoderConfig
from openvision3.models.vae import TINY_VAE_ARCH, FrozenVAE, VAEConfig

MODEL_TYPE = "openvision3_vision"


class OpenVision3VisionConfig(PretrainedConfig):
    """The tower: ``encoder`` (``EncoderConfig`` fields), ``vae_arch`` (diffusers
    ``AutoencoderKL`` arguments), the latent convention and the input side ``image_size``.
    ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` and ``patch_size`` (pixels
    per token side) are derived, for code that reads CLIP-style fields."""

    model_type = MODEL_TYPE
    base_config_key = "vision_config"

    def __init__(
        self,
        encoder: dict | None = None,
        vae_arch: dict | None = None,
        vae_convention: str = "ov3",
        vae_scaling_factor: float = 0.3611,
        vae_shift_factor: float = 0.1159,
        image_size: int = 224,
        **kwargs,
    ):
        enc = from_dict(EncoderConfig, dict(encoder or {}), "encoder")
        self.encoder = to_dict(enc)
        self.vae_arch = dict(vae_arch or TINY_VAE_ARCH)
        self.vae_convention = vae_convention
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.vae_shift_factor = float(vae_shift_factor)
        self.image_size = int(image_size)
        for derived in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size"):
            kwargs.pop(derived, None)
        self.hidden_size = enc.width
        self.num_hidden_layers = enc.depth
        self.num_attention_heads = enc.heads
        self.patch_size = self.vae_config().downsample * enc.patch_size
        super().__init__(**kwargs)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the patch size {self.patch_size}"
            )

    def encoder_config(self) -> EncoderConfig:
        return from_dict(EncoderConfig, dict(self.encoder), "encoder")

    def vae_config(self) -> VAEConfig:
        return VAEConfig(
            pretrained="",
            convention=self.vae_convention,
            scaling_factor=self.vae_scaling_factor,
            shift_factor=self.vae_shift_factor,
            arch=dict(self.vae_arch),
        )

    @property
    def num_image_tokens(self) -> int:
        """N = (image_size / patch_size)^2 unified tokens per image (CLS excluded)."""
        return (self.image_size // self.patch_size) ** 2


class TowerVAE(FrozenVAE):
    """``FrozenVAE`` whose weights stay in the state dict: a transformers checkpoint of the
    tower carries its VAE (``FrozenVAE`` itself leaves them to their own source)."""

    def __init__(self, cfg: VAEConfig, autoencoder: nn.Module):
        nn.Module.__init__(self)  # not FrozenVAE.__init__: no state-dict hooks
        self.cfg = cfg
        self.vae = autoencoder
        self.vae.requires_grad_(False)
        self.vae.eval()


def autoencoder_arch(autoencoder: nn.Module) -> dict:
    """The constructor arguments of a diffusers ``AutoencoderKL`` (from its config)."""
    from diffusers import AutoencoderKL

    params = inspect.signature(AutoencoderKL.__init__).parameters
    return {k: v for k, v in dict(autoencoder.config).items() if k in params and k != "self"}


class OpenVision3VisionModel(PreTrainedModel):
    """Pixels (B, 3, R, R) in [-1, 1] -> CLIP-style outputs: ``last_hidden_state`` (B, 1 + N, D),
    ``hidden_states`` (depth + 1) x (B, 1 + N, D) with the CLS row first, and ``pooler_output``
    (B, E), the pooled contrastive embedding."""

    config_class = OpenVision3VisionConfig
    config: OpenVision3VisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "openvision3"
    input_modalities = ("image",)
    _supports_sdpa = True  # the encoder's attention is F.scaled_dot_product_attention
    _keep_in_fp32_modules_strict = ["vae"]
    _no_split_modules = ["Block"]

    def __init__(self, config: OpenVision3VisionConfig):
        super().__init__(config)
        from diffusers import AutoencoderKL

        self.vae = TowerVAE(config.vae_config(), AutoencoderKL.from_config(config.vae_arch))
        self.encoder = Encoder(config.encoder_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The encoder initialises itself (``models/layers.init_weights``) and the VAE keeps
        # diffusers' defaults; real weights come from ``from_openvision3`` or a checkpoint.
        return None

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.train(False)  # frozen: never in training mode
        return self

    @classmethod
    def from_openvision3(cls, model: nn.Module, image_size: int) -> OpenVision3VisionModel:
        """The tower of an ``OpenVision3`` (its encoder and VAE, weights copied)."""
        if model.vae is None:
            raise ValueError("the OpenVision 3 model has no VAE; load it with its VAE")
        vae_cfg = model.vae.cfg
        config = OpenVision3VisionConfig(
            encoder=to_dict(dataclasses.replace(model.encoder.cfg)),
            vae_arch=autoencoder_arch(model.vae.vae),
            vae_convention=vae_cfg.convention,
            vae_scaling_factor=vae_cfg.scaling_factor,
            vae_shift_factor=vae_cfg.shift_factor,
            image_size=image_size,
        )
        tower = cls(config)
        tower.encoder.load_state_dict(model.encoder.state_dict())
        tower.vae.vae.load_state_dict(model.vae.vae.state_dict())
        return tower.eval()

    def latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> scaled latents (B, C, R/8, R/8), in fp32 outside autocast."""
        weight = next(self.vae.vae.parameters())
        with torch.autocast(pixel_values.device.type, enabled=False):
            return self.vae.encode(pixel_values.to(weight.dtype))

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> the unified tokens (B, N, D), as ``OpenVision3.encode``."""
        latents = self.latents(pixel_values)
        return self.encoder(latents.to(self.encoder.patch_embed.weight.dtype))

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states=None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        # transformers 5.24 passes output_hidden_states=<vision_feature_layer> (an int, 0 and
        # -1 included, or a list) and older versions True: the whole tuple is always returned.
        latents = self.latents(pixel_values)
        latents = latents.to(self.encoder.patch_embed.weight.dtype)
        states = self.encoder.hidden_states(latents, include_prefix=True)  # (B, 1 + N, D) each
        last = states[-1]
        pooled = self.encoder.pool(last[:, 1:])  # (B, E)
        out = BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=pooled, hidden_states=states
        )
        return out if return_dict is not False else out.to_tuple()


AutoConfig.register(MODEL_TYPE, OpenVision3VisionConfig, exist_ok=True)
AutoModel.register(OpenVision3VisionConfig, OpenVision3VisionModel, exist_ok=True)
