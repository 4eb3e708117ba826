"""The OpenVision 3 training objective (paper Eq. 3-6, Table 1).

    L_rec = L1(x, x^) + beta * L1(z_vae, z^_vae) + lambda * LPIPS(x, x^)
    L_und = caption_weight * L_caption + contrastive_weight * L_contrastive
    L     = rec_weight * L_rec + und_weight * L_und

A branch whose weight (product) is zero is neither computed nor required in the model
output, and the model skips it through the ``needs_*`` properties; this is how the
ablations "reconstruction only" / "understanding only" run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from openvision3.losses.caption import caption_loss
from openvision3.losses.contrastive import MAX_LOGIT_SCALE, ContrastiveLoss
from openvision3.losses.reconstruction import ReconstructionLoss, ReconstructionLossConfig


@dataclass
class ObjectiveConfig:
    """Loss weights; defaults are the paper's pre-training stage (128 px, no LPIPS)."""

    rec_weight: float = 0.5  # weight of the reconstruction branch (latent + pixel + LPIPS terms)
    und_weight: float = 1.0  # weight of the understanding branch (contrastive + captioning)
    caption_weight: float = 1.0  # weight of the captioning loss within understanding
    contrastive_weight: float = 1.0  # weight of the contrastive loss within understanding
    latent_weight: float = 0.4  # beta
    lpips_weight: float = 0.0  # lambda; 0.5 in the 256 px stage
    lpips_net: str = "vgg"  # LPIPS backbone: vgg | alex
    lpips_weights: str = ""  # local torchvision backbone weights; "" = torch hub cache
    # Speed-up that changes the recipe (off at 1.0): the model decodes only this fraction of
    # each batch through the frozen VAE decoder for the pixel terms (docs/training-speed.md).
    pixel_loss_fraction: float = 1.0
    # Branches whose loss does not reach the encoder: their heads read the tokens with the
    # gradient stopped at z_u (probes; heads trained on a frozen encoder).
    stop_gradient: tuple[str, ...] = ()

    def __post_init__(self):
        self.stop_gradient = tuple(self.stop_gradient)
        unknown = set(self.stop_gradient) - {"reconstruction", "contrastive", "caption"}
        if unknown:
            raise ValueError(
                f"stop_gradient takes reconstruction, contrastive, caption; got {sorted(unknown)}"
            )
        for name in ("rec_weight", "und_weight", "caption_weight", "contrastive_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.reconstruction_config()  # validates latent_weight, lpips_weight, lpips_net
        if not 0.0 < self.pixel_loss_fraction <= 1.0:
            raise ValueError(
                f"pixel_loss_fraction must be in (0, 1], got {self.pixel_loss_fraction}"
            )
        if not (self.needs_reconstruction or self.needs_contrastive or self.needs_caption):
            raise ValueError("all loss weights are zero: nothing would be trained")

    def reconstruction_config(self) -> ReconstructionLossConfig:
        return ReconstructionLossConfig(
            latent_weight=self.latent_weight,
            lpips_weight=self.lpips_weight,
            lpips_net=self.lpips_net,
            lpips_weights=self.lpips_weights,
        )

    @property
    def needs_reconstruction(self) -> bool:
        return self.rec_weight > 0

    @property
    def needs_contrastive(self) -> bool:
        return self.und_weight * self.contrastive_weight > 0

    @property
    def needs_caption(self) -> bool:
        return self.und_weight * self.caption_weight > 0


def _take(out: dict[str, torch.Tensor], key: str, branch: str) -> torch.Tensor:
    if key not in out:
        raise KeyError(
            f"the {branch} loss needs {key!r} in the model output, which has {sorted(out)}; "
            f"set its weight to 0 in ObjectiveConfig to skip the branch"
        )
    return out[key]


class Objective(nn.Module):
    """Weighted sum of the reconstruction and understanding losses.

    Holds no trainable parameters (the temperature lives in the model and arrives as
    ``out["logit_scale"]``) and no state_dict entries (LPIPS is kept outside it).
    """

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__()
        self.cfg = cfg
        self.reconstruction = ReconstructionLoss(cfg.reconstruction_config())
        self.contrastive = ContrastiveLoss(local_loss=True, gather_with_grad=True)

    def combine(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(L_und or None, L) from the branch losses present among "rec", "contrastive", "caption"."""
        cfg = self.cfg
        und = None
        if "contrastive" in parts or "caption" in parts:
            und = cfg.contrastive_weight * parts.get("contrastive", 0.0)
            und = und + cfg.caption_weight * parts.get("caption", 0.0)
        total = cfg.rec_weight * parts["rec"] if "rec" in parts else 0.0
        return und, (total + cfg.und_weight * und if und is not None else total)

    def forward(
        self, out: dict[str, torch.Tensor], scales: dict[str, torch.Tensor | float] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and detached () terms from the model output.

        Args:
            out: model output; keys per needed branch:
                reconstruction: "images" (B, 3, H, W), "images_hat" (B, 3, H, W),
                    "latents" (B, C, h, w), "latents_hat" (B, C, h, w);
                contrastive: "image_embeds" (B, E), "text_embeds" (B, E), optional
                    "text_embeds_2" (B, E), "logit_scale" (1,) exponentiated;
                caption: "caption_logits" (B, L, V), "caption_targets" (B, L).
            scales: optional factor per branch loss ("rec", "contrastive", "caption") applied
                to the returned total only (gradient accumulation weighs micro-batches so);
                the terms stay unscaled.

        Returns:
            () total loss, and terms: "loss" plus, for the computed branches, "rec",
            "pixel_l1", "latent_l1", "lpips" (lambda > 0), "und", "contrastive",
            "logit_scale" (the clamped value the loss used), "caption".
        """
        cfg = self.cfg
        parts: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {}
        if cfg.needs_reconstruction:
            parts["rec"], rec_terms = self.reconstruction(
                _take(out, "images", "reconstruction"),
                _take(out, "images_hat", "reconstruction"),
                _take(out, "latents", "reconstruction"),
                _take(out, "latents_hat", "reconstruction"),
            )
            terms["rec"] = parts["rec"].detach()
            terms.update(rec_terms)
        if cfg.needs_contrastive:
            logit_scale = _take(out, "logit_scale", "contrastive")
            parts["contrastive"] = self.contrastive(
                _take(out, "image_embeds", "contrastive"),
                _take(out, "text_embeds", "contrastive"),
                logit_scale,
                out.get("text_embeds_2"),
            )
            terms["contrastive"] = parts["contrastive"].detach()
            terms["logit_scale"] = logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).squeeze()
        if cfg.needs_caption:
            parts["caption"] = caption_loss(
                _take(out, "caption_logits", "caption"),
                _take(out, "caption_targets", "caption"),
            )
            terms["caption"] = parts["caption"].detach()
        und, total = self.combine(parts)
        if und is not None:
            terms["und"] = und.detach()
        terms["loss"] = total.detach()
        if scales:
            _, total = self.combine({k: v * scales.get(k, 1.0) for k, v in parts.items()})
        return total, terms
