"""ExperimentConfig: every component's config composed into one, with a JSON round trip.

OpenVision 3's part of the training settings lives here too, on top of the engine's: a stage's
resolution and LPIPS weight (``OV3StageConfig``), the frozen VAE's speed-ups and OpenVision's
AdamW (``OV3TrainConfig``), and the base LR x batch / 256 rule the presets apply (``peak_lr``).

Written as ``config.json`` into every run directory and checkpoint. Presets live in
``openvision3.configs`` (as code); the command line overrides any field with tyro
(``ov3 train pretrain_b2 --train.stages.0.steps 100 --data.path 'shards/{000..099}.tar'``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from openvision3.data.loader import DataConfig
from openvision3.errors import ConfigError
from openvision3.losses.objective import ObjectiveConfig
from openvision3.models.openvision3 import ModelConfig
from openvision3.train.config import StageConfig, TrainConfig
from openvision3.train.optim import OptimConfig
from openvision3.train.task import RunConfig


def peak_lr(base_lr: float, global_batch: int) -> float:
    """OpenVision's linear scaling rule (github.com/UCSC-VLAA/OpenVision): the peak LR is
    ``base_lr * global_batch / 256`` (8e-6 at batch 8192 -> 2.56e-4). The presets state base
    LRs as the paper does (Table 1) and write the peak into the stage."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    return base_lr * global_batch / 256


def base_lr(stage: StageConfig) -> float:
    """The base LR of a stage's peak under :func:`peak_lr` (exact for power-of-two batches),
    for reports that state the recipe as the paper does."""
    return stage.lr * 256 / stage.batch_size


def ov3_optim(**overrides) -> OptimConfig:
    """OpenVision's AdamW: betas (0.9, 0.95), weight decay 0.2 on weight matrices only (the
    OpenVision training code; the paper's Table 1 gives batch and LR)."""
    return OptimConfig(**{"betas": (0.9, 0.95), "weight_decay": 0.2, **overrides})


@dataclass
class OV3StageConfig(StageConfig):
    """An OpenVision 3 stage: the engine's stage plus the image side it trains at and its LPIPS
    weight (the paper: 128 px without LPIPS, then 256 px with)."""

    lr: float = 8e-6  # peak learning rate (absolute; the presets apply base x batch / 256)
    resolution: int = 128  # image side in pixels (a multiple of 16)
    lpips_weight: float | None = None  # this stage's LPIPS weight; None = the objective's

    def __post_init__(self):
        super().__post_init__()
        if self.resolution <= 0 or self.resolution % 16:
            raise ValueError(
                f"stage resolution must be a positive multiple of 16, got {self.resolution}"
            )
        if (self.lpips_weight or 0) < 0:
            raise ValueError(f"stage lpips_weight must be >= 0, got {self.lpips_weight}")


@dataclass
class OV3TrainConfig(TrainConfig):
    """The engine's run settings with OpenVision 3's stages, AdamW and frozen-VAE speed-ups."""

    stages: list[OV3StageConfig] = field(default_factory=lambda: [OV3StageConfig()])
    optim: OptimConfig = field(default_factory=ov3_optim)
    compile_vae: bool = False  # torch.compile the frozen VAE's encoder and decoder
    channels_last_vae: bool = True  # NHWC convolutions in the frozen VAE (CUDA only)


@dataclass
class EvalConfig:
    """Evaluation on the held-out split during and after training."""

    num_images: int = 1000  # from the val split (0 = all)
    batch_size: int = 100  # images per evaluation forward
    resolution: int = 0  # 0 = the last stage's resolution
    zero_shot: bool = True  # needs labels and class names (synthetic world, ImageNet folders)
    retrieval: bool = True  # image-text retrieval recall
    reconstruction: bool = True  # PSNR / SSIM of decoded images
    captioning: bool = True  # the captioning evaluation (scores and sample captions)
    caption_samples: int = 16  # images captioned


@dataclass
class ExperimentConfig(RunConfig):
    """An OpenVision 3 training run: the model, its objective, data and evaluation, on the
    engine's `train` settings (`RunConfig`)."""

    TASK = "openvision3"

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: OV3TrainConfig = field(default_factory=OV3TrainConfig)

    def __post_init__(self):
        super().__post_init__()
        p = self.model.pixel_patch
        for s in self.train.stages:
            if s.resolution % p:
                raise ValueError(
                    f"stage resolution {s.resolution} is not a multiple of {p} (pixels per token)"
                )

    def validate(self) -> None:
        """Checks on the final values, after the command line: raises ``ConfigError`` naming
        the flag. Presets leave such fields (the data path) to the command line, so these
        checks cannot run while a preset is built. Changes nothing."""
        super().validate()
        if not self.data.has_images and not self.data.latents:
            raise ConfigError(
                f"--data.path is required for source {self.data.source!r} "
                "(or --data.latents to train from a latent cache)"
            )
        towers = (("text", "text_context"), ("caption", "caption_context"))
        for tower, field_name in towers:
            cfg = getattr(self.model, tower)
            if cfg is not None and getattr(self.data, field_name) > cfg.context_length:
                raise ConfigError(
                    f"--data.{field_name.replace('_', '-')} {getattr(self.data, field_name)} "
                    f"exceeds --model.{tower}.context-length {cfg.context_length}"
                )

    def resolve_inputs(self) -> None:
        """With ``train.init_from`` a released encoder (``open_clip_config.json``; a folder or
        a hub id), the model's encoder becomes that encoder's architecture (its stored position
        table, width, depth), the caption decoder reads tokens of its width and the text tower
        embeds into its contrastive space."""
        path = self.train.init_from
        if not path:
            return
        from openvision3.pretrained import is_released, read_released, resolve

        try:
            local = resolve(path)
        except FileNotFoundError as err:
            raise ConfigError(f"--train.init-from: {err}") from None
        if not is_released(local):
            return
        encoder, _ = read_released(local)
        text, caption = self.model.text, self.model.caption
        if text is not None:  # the contrastive space is the encoder's
            text = dataclasses.replace(text, embed_dim=encoder.embed_dim)
        if caption is not None:
            caption = dataclasses.replace(caption, image_width=encoder.width)
        self.model = dataclasses.replace(self.model, encoder=encoder, text=text, caption=caption)

    def build_task(self):
        from openvision3.ov3.task import OpenVision3Task

        return OpenVision3Task(self)


__all__ = [
    "EvalConfig",
    "ExperimentConfig",
    "OV3StageConfig",
    "OV3TrainConfig",
    "StageConfig",
    "TrainConfig",
    "base_lr",
    "ov3_optim",
    "peak_lr",
]
