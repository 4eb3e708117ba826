"""Training losses; the loss weights live here, not in the model."""

from openvision3.losses.caption import caption_loss
from openvision3.losses.contrastive import ContrastiveLoss
from openvision3.losses.objective import Objective, ObjectiveConfig
from openvision3.losses.reconstruction import (
    ReconstructionLoss,
    ReconstructionLossConfig,
    build_lpips,
)

__all__ = [
    "ContrastiveLoss",
    "Objective",
    "ObjectiveConfig",
    "ReconstructionLoss",
    "ReconstructionLossConfig",
    "build_lpips",
    "caption_loss",
]
