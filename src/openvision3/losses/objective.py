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

    rec_weight: float = 0.5
    und_weight: float = 1.0
    caption_weight: float = 1.0
    contrastive_weight: float = 1.0
    latent_weight: float = 0.4  # beta
    lpips_weight: float = 0.0  # lambda; 0.5 in the 256 px stage
    lpips_net: str = "vgg"
    lpips_weights: str = ""  # local torchvision backbone weights; "" = torch hub cache

    def __post_init__(self):
        for name in ("rec_weight", "und_weight", "caption_weight", "contrastive_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.reconstruction_config()  # validates latent_weight, lpips_weight, lpips_net
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

    def forward(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and detached () terms from the model output.

        Args:
            out: model output; keys per needed branch:
                reconstruction: "images" (B, 3, H, W), "images_hat" (B, 3, H, W),
                    "latents" (B, C, h, w), "latents_hat" (B, C, h, w);
                contrastive: "image_embeds" (B, E), "text_embeds" (B, E), optional
                    "text_embeds_2" (B, E), "logit_scale" (1,) exponentiated;
                caption: "caption_logits" (B, L, V), "caption_targets" (B, L).

        Returns:
            () total loss, and terms: "loss" plus, for the computed branches, "rec",
            "pixel_l1", "latent_l1", "lpips" (lambda > 0), "und", "contrastive",
            "logit_scale" (the clamped value the loss used), "caption".
        """
        cfg = self.cfg
        total = 0.0
        terms: dict[str, torch.Tensor] = {}
        if cfg.needs_reconstruction:
            rec, rec_terms = self.reconstruction(
                _take(out, "images", "reconstruction"),
                _take(out, "images_hat", "reconstruction"),
                _take(out, "latents", "reconstruction"),
                _take(out, "latents_hat", "reconstruction"),
            )
            total = total + cfg.rec_weight * rec
            terms["rec"] = rec.detach()
            terms.update(rec_terms)
        if cfg.needs_contrastive or cfg.needs_caption:
            und = 0.0
            if cfg.needs_contrastive:
                logit_scale = _take(out, "logit_scale", "contrastive")
                contrastive = self.contrastive(
                    _take(out, "image_embeds", "contrastive"),
                    _take(out, "text_embeds", "contrastive"),
                    logit_scale,
                    out.get("text_embeds_2"),
                )
                und = und + cfg.contrastive_weight * contrastive
                terms["contrastive"] = contrastive.detach()
                terms["logit_scale"] = logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).squeeze()
            if cfg.needs_caption:
                caption = caption_loss(
                    _take(out, "caption_logits", "caption"),
                    _take(out, "caption_targets", "caption"),
                )
                und = und + cfg.caption_weight * caption
                terms["caption"] = caption.detach()
            total = total + cfg.und_weight * und
            terms["und"] = und.detach()
        terms["loss"] = total.detach()
        return total, terms
