"""OpenVision3: frozen VAE -> ViT encoder -> unified tokens, with a reconstruction decoder
(generation branch) and text towers (understanding branch) as separate heads on the tokens.

Architecture only. Loss weights live in ``losses/objective.py``; loading and saving live in
``openvision3/pretrained.py`` (``from_pretrained`` / ``save_pretrained`` delegate there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.models.caption import CaptionDecoder, CaptionDecoderConfig, square_grid
from openvision3.models.decoder import Decoder, DecoderConfig
from openvision3.models.encoder import Encoder, EncoderConfig
from openvision3.models.text import TextEncoder, TextEncoderConfig
from openvision3.models.vae import FrozenVAE, VAEConfig


@dataclass
class ModelConfig:
    """The whole model. `decoder`, `text` and `caption` may be None (encoder-only models,
    e.g. the released checkpoints, or ablations without a branch)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig | None = field(default_factory=DecoderConfig)
    text: TextEncoderConfig | None = field(default_factory=TextEncoderConfig)
    caption: CaptionDecoderConfig | None = field(default_factory=CaptionDecoderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    # initial contrastive logit scale (log 1/0.07, CLIP's)
    logit_scale_init: float = math.log(1 / 0.07)
    name: str = ""  # the model preset's name, recorded in exports

    def __post_init__(self):
        e = self.encoder
        if e.in_channels != self.vae.latent_channels:
            raise ValueError(
                f"encoder.in_channels ({e.in_channels}) must equal the VAE's latent channels "
                f"({self.vae.latent_channels})"
            )
        if self.text is not None and self.text.embed_dim != e.embed_dim:
            raise ValueError(
                f"text.embed_dim ({self.text.embed_dim}) must equal encoder.embed_dim ({e.embed_dim})"
            )
        if self.caption is not None and self.caption.image_width != e.width:
            raise ValueError(
                f"caption.image_width ({self.caption.image_width}) must equal encoder.width ({e.width})"
            )

    @property
    def pixel_patch(self) -> int:
        """Pixels per token side: VAE downsampling x encoder patch (16 for FLUX + patch 2)."""
        return self.vae.downsample * self.encoder.patch_size


BRANCHES = ("reconstruction", "contrastive", "caption")


class MissingComponentError(RuntimeError):
    """A method needs a part (decoder, text towers, VAE) this model was built without."""


class OpenVision3(nn.Module):
    """Unified visual tokenizer.

    Shapes: images (B, 3, H, W) in [-1, 1]; latents (B, C, H/8, W/8); tokens (B, N, D) with
    N = (H/16)(W/16); embeddings (B, E); text ids (B, L).
    """

    # The repeated block of every tower: the unit of activation checkpointing, compile and
    # FSDP2 (applied from outside, ``distributed/parallelize.py``; Hugging Face's convention).
    _no_split_modules = ["Block"]

    def __init__(self, cfg: ModelConfig, vae: FrozenVAE | None | str = "build"):
        super().__init__()
        self.cfg = cfg
        # vae="build": from cfg.vae; None: latent-only model (no image methods); or a FrozenVAE.
        self.vae = FrozenVAE(cfg.vae) if vae == "build" else vae
        self.encoder = Encoder(cfg.encoder)
        c = cfg.vae.latent_channels
        self.decoder = (
            Decoder(cfg.decoder, cfg.encoder.width, c, cfg.encoder.patch_size)
            if cfg.decoder
            else None
        )
        self.text = TextEncoder(cfg.text) if cfg.text else None
        self.captioner = CaptionDecoder(cfg.caption) if cfg.caption else None
        if self.text is not None:
            self.logit_scale = nn.Parameter(torch.full((1,), cfg.logit_scale_init))  # shape [1]

    # Name fragments of parameters that take no weight decay: open_clip's rule, extended to the
    # position tables and class tokens of timm / open_clip ViTs (biases and norm gains, ndim < 2,
    # take none anyway).
    NO_DECAY_NAMES = (
        "pos_embed",
        "positional_embedding",
        "cls_token",
        "class_embedding",
        "logit_scale",
    )

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW leaves without weight decay (timm's hook, read by
        ``train/optim.py``)."""
        return {n for n, _ in self.named_parameters() if any(s in n for s in self.NO_DECAY_NAMES)}

    # ------------------------------------------------------------------ parts
    def _need(self, part: str) -> nn.Module:
        module = getattr(self, part)
        if module is None:
            what = {
                "vae": "VAE (it was loaded with vae=None: use the *_latents methods or pass a VAE)",
                "decoder": "a reconstruction decoder",
                "text": "a text encoder",
                "captioner": "a caption decoder",
            }[part]
            hint = (
                " Released OpenVision 3 checkpoints contain only the encoder."
                if part != "vae"
                else ""
            )
            raise MissingComponentError(f"this model has no {what}.{hint}")
        return module

    # ------------------------------------------------------------------ encoding
    def encode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled VAE latents -> unified tokens (B, N, D)."""
        return self.encoder(latents)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> unified tokens (B, N, D)."""
        return self.encoder(self._need("vae").encode(images))

    def embed_latents(self, latents: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> pooled, projected embedding (B, E)."""
        z = self.encoder.pool(self.encoder(latents))
        return F.normalize(z, dim=-1) if normalize else z

    def embed_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E), L2-normalised by default (contrastive space)."""
        return self.embed_latents(self._need("vae").encode(images), normalize=normalize)

    def embed_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token ids (B, L) -> (B, E), L2-normalised by default."""
        z = self._need("text")(ids)
        return F.normalize(z, dim=-1) if normalize else z

    # ------------------------------------------------------------------ decoding
    def token_grid(self, tokens: torch.Tensor, grid: tuple[int, int] | None) -> tuple[int, int]:
        return tuple(grid) if grid is not None else square_grid(tokens.shape[1])

    def decode_latents(
        self, tokens: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Unified tokens (B, N, D) -> predicted latents (B, C, h, w); no noise outside training."""
        return self._need("decoder")(tokens, self.token_grid(tokens, grid))

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Unified tokens (B, N, D) -> images (B, 3, H, W) through the frozen VAE decoder."""
        latents = self.decode_latents(tokens, grid)
        return self._need("vae").decode(latents)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> reconstruction (B, 3, H, W), clean tokens (no decoder noise)."""
        latents = self._need("vae").encode(images)
        tokens = self.encoder(latents)
        grid = self.encoder.grid(latents.shape[-2:])
        return self.vae.decode(self._need("decoder")(tokens, grid, noise=False))

    @torch.no_grad()
    def caption_ids(
        self, images: torch.Tensor, max_len: int | None = None, beam_size: int = 1
    ) -> torch.Tensor:
        """(B, 3, H, W) -> generated caption token ids (B, T), SOT first, EOT then PAD."""
        latents = self._need("vae").encode(images)
        tokens, grid = self.encoder(latents), self.encoder.grid(latents.shape[-2:])
        captioner = self._need("captioner")
        return captioner.generate(tokens, max_len=max_len, beam_size=beam_size, grid=grid)

    def caption(
        self, images: torch.Tensor, max_len: int | None = None, beam_size: int = 1
    ) -> list[str]:
        """(B, 3, H, W) -> B captions (greedy when beam_size == 1, else beam search)."""
        from openvision3.tokenizer import Tokenizer

        return Tokenizer().decode_batch(self.caption_ids(images, max_len, beam_size))

    # ------------------------------------------------------------------ training
    def forward(
        self,
        batch: dict[str, torch.Tensor],
        reconstruction: bool = True,
        contrastive: bool = True,
        caption: bool = True,
        pixel_fraction: float = 1.0,
        detach: tuple[str, ...] = (),
    ) -> dict[str, torch.Tensor]:
        """One training forward. ``batch``: ``images`` (B, 3, H, W) and/or ``latents``
        (B, C, h, w) already encoded by this VAE (a latent cache), ``text`` (B, L)
        [+ ``text_2``], ``caption`` (B, Lc). Branch flags skip unused heads. The images are
        the pixel targets, so reconstruction needs them even when latents are given.
        ``pixel_fraction`` < 1 decodes only the first round(f * B) samples to pixels (a random
        subset when the batch is shuffled); the latent term still covers all B.
        ``detach``: branches ("reconstruction", "contrastive", "caption") that read the tokens
        with the gradient stopped at z_u: their heads (the pooling norm and projection, the
        decoders) still train, the encoder gets none of their gradient (probes, frozen-encoder
        heads).

        Returns the tensors the objective consumes (see ``losses/objective.py``).
        """
        latents = batch.get("latents")
        if latents is None:
            latents = self._need("vae").encode(batch["images"])
        z = self.encoder(latents)  # (B, N, D)
        grid = self.encoder.grid(latents.shape[-2:])  # (h, w) of the N tokens
        tokens = {b: z.detach() if b in detach else z for b in BRANCHES}
        out: dict[str, torch.Tensor] = {}
        if contrastive:
            pooled = self.encoder.pool(tokens["contrastive"])  # (B, E)
            out["image_embeds"] = F.normalize(pooled, dim=-1)
            out["text_embeds"] = self.embed_text(batch["text"])
            if "text_2" in batch:
                out["text_embeds_2"] = self.embed_text(batch["text_2"])
            out["logit_scale"] = self.logit_scale.exp()
        if caption:
            cap = self._need("captioner")(tokens["caption"], batch["caption"], grid)
            out["caption_logits"], out["caption_targets"] = cap["logits"], cap["targets"]
        if reconstruction:
            latents_hat = self._need("decoder")(tokens["reconstruction"], grid)
            out["latents"], out["latents_hat"] = latents, latents_hat
            n = max(1, round(latents.shape[0] * pixel_fraction))
            out["images"] = batch["images"][:n]  # (n, 3, H, W)
            out["images_hat"] = self._need("vae").decode(latents_hat[:n])
        return out
