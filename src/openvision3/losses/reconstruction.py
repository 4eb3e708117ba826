"""Reconstruction loss of the generation branch (paper Eq. 3).

    L_rec = L1(x, x^) + beta * L1(z_vae, z^_vae) + lambda * LPIPS(x, x^)

beta = 0.4; lambda = 0 in the 128 px stage and 0.5 in the 256 px stage [paper, Table 1].
LPIPS comes from the ``lpips`` package. Its linear heads ship in the wheel, but the
backbone needs torchvision's ImageNet weights, which are read from a local file (never
downloaded): ``lpips_weights`` if set, else the torch hub cache.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.errors import MissingWeightsError

# lpips net name -> torchvision IMAGENET1K_V1 checkpoint of its backbone.
BACKBONE_URLS = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


@dataclass
class ReconstructionLossConfig:
    """Weights of L_rec; the pixel L1 term always has weight 1."""

    latent_weight: float = 0.4  # beta
    lpips_weight: float = 0.0  # lambda; 0.5 for the 256 px stage
    lpips_net: str = "vgg"
    # Local torchvision backbone state dict (.pth or .safetensors); "" = torch hub cache.
    lpips_weights: str = ""

    def __post_init__(self):
        for name in ("latent_weight", "lpips_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.lpips_net not in BACKBONE_URLS:
            raise ValueError(
                f"lpips_net must be one of {sorted(BACKBONE_URLS)}, got {self.lpips_net!r}"
            )


def _backbone_path(net: str, lpips_weights: str) -> str:
    """The local backbone checkpoint for ``net``, or a FileNotFoundError saying what to fetch."""
    url = BACKBONE_URLS[net]
    if lpips_weights:
        if not os.path.isfile(lpips_weights):
            raise MissingWeightsError(
                f"lpips_weights={lpips_weights!r} does not exist. It must be torchvision's "
                f"ImageNet state dict for the LPIPS '{net}' backbone, downloaded from {url}"
            )
        return lpips_weights
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(cached):
        raise MissingWeightsError(
            f"LPIPS (lpips_weight > 0) needs the ImageNet weights of its '{net}' backbone, "
            f"and this machine cannot download them. Download {url} and either put it at "
            f"{cached} (the torch hub cache; set TORCH_HOME to move it) or set the config "
            "field lpips_weights to its path (.pth or .safetensors)."
        )
    return cached


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_backbone(backbone: nn.Module, path: str) -> None:
    """Copy torchvision ``features.N.*`` tensors into lpips' ``sliceK.N.*`` modules.

    lpips' pretrained_networks keep torchvision's layer index N as the module name inside
    each slice, so the mapping only drops the slice prefix.
    """
    source = _load_state_dict(path)
    mapped, missing = {}, []
    for key in backbone.state_dict():
        tv_key = re.sub(r"^slice\d+\.", "features.", key)
        if tv_key in source:
            mapped[key] = source[tv_key]
        else:
            missing.append(tv_key)
    if missing:
        raise ValueError(
            f"{path} is not a torchvision state dict of this LPIPS backbone; "
            f"missing {len(missing)} keys, e.g. {missing[:3]}"
        )
    backbone.load_state_dict(mapped, strict=True)


def build_lpips(net: str = "vgg", lpips_weights: str = "") -> nn.Module:
    """A frozen, eval-mode ``lpips.LPIPS`` with its backbone read from a local file.

    Returns:
        module mapping two (B, 3, H, W) images in [-1, 1] to distances (B, 1, 1, 1).
    """
    path = _backbone_path(net, lpips_weights)  # fail before the slow construction
    from openvision3.errors import require

    lpips = require("lpips", "train", "the LPIPS loss")
    with warnings.catch_warnings():
        # lpips builds its random trunk with torchvision's deprecated `pretrained=False`.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    _load_backbone(model.net, path)
    model.eval().requires_grad_(False)
    return model


class ReconstructionLoss(nn.Module):
    """L_rec: pixel L1 + beta * latent L1 + lambda * LPIPS (means over all elements)."""

    def __init__(self, cfg: ReconstructionLossConfig):
        super().__init__()
        self.cfg = cfg
        # Built on first use and held in a plain list, outside `_modules`: the frozen
        # backbone never enters state_dict, checkpoints, optimisers or FSDP wrapping.
        self._lpips: list[nn.Module] = []

    def _perceptual(self, like: torch.Tensor) -> nn.Module:
        if not self._lpips:
            self._lpips.append(build_lpips(self.cfg.lpips_net, self.cfg.lpips_weights))
        return self._lpips[0].to(device=like.device, dtype=like.dtype)

    def forward(
        self,
        images: torch.Tensor,
        images_hat: torch.Tensor,
        latents: torch.Tensor,
        latents_hat: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction loss and its detached terms.

        Args:
            images: (B, 3, H, W) targets in [-1, 1].
            images_hat: (B, 3, H, W) reconstructions (VAE decoder output).
            latents: (B, C, h, w) scaled VAE latents of ``images``.
            latents_hat: (B, C, h, w) predicted latents.

        Returns:
            () total, and {"pixel_l1", "latent_l1"[, "lpips" when its weight > 0]} as ().
        """
        pixel = F.l1_loss(images_hat, images)
        latent = F.l1_loss(latents_hat, latents)
        loss = pixel + self.cfg.latent_weight * latent
        terms = {"pixel_l1": pixel.detach(), "latent_l1": latent.detach()}
        if self.cfg.lpips_weight > 0:
            perceptual = self._perceptual(images_hat)
            dist = perceptual(images_hat, images.to(images_hat.dtype), normalize=False).mean()
            loss = loss + self.cfg.lpips_weight * dist
            terms["lpips"] = dist.detach()
        return loss, terms
