"""Experiment presets. Each has a ``_smoke`` variant (tiny model, a few steps, synthetic data)
that runs the same code path in seconds on a CPU.

The paper's recipe (Table 1; 1 epoch = 1.28M samples):
  pre-train  128 px, batch 8192, base LR 8e-6, 4000 epochs, warmup 40, no LPIPS
  fine-tune  256 px, batch 4096, base LR 4e-7,  400 epochs, warmup 20, LPIPS 0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable

from openvision3.config import EvalConfig, ExperimentConfig, StageConfig, TrainConfig
from openvision3.data.loader import DataConfig
from openvision3.data.synthetic import SyntheticConfig
from openvision3.losses.objective import ObjectiveConfig
from openvision3.models.decoder import DecoderConfig
from openvision3.models.encoder import EncoderConfig
from openvision3.models.heads import CaptionDecoderConfig
from openvision3.models.openvision3 import ModelConfig
from openvision3.models.presets import model_config
from openvision3.models.text import TextEncoderConfig
from openvision3.models.vae import VAEConfig
from openvision3.train.optim import OptimConfig

EPOCH = 1_281_167  # ImageNet-1k train images: the paper's epoch unit (about 1.28M samples)


def _steps(epochs: float, batch: int) -> int:
    return max(1, math.ceil(epochs * EPOCH / batch))


def pretrain_stage() -> StageConfig:
    return StageConfig(
        resolution=128,
        steps=_steps(4000, 8192),
        batch_size=8192,
        base_lr=8e-6,
        warmup_steps=_steps(40, 8192),
        lpips_weight=0.0,
    )


def finetune_stage() -> StageConfig:
    return StageConfig(
        resolution=256,
        steps=_steps(400, 4096),
        batch_size=4096,
        base_lr=4e-7,
        warmup_steps=_steps(20, 4096),
        lpips_weight=0.5,
    )


def _paper(name: str, stages: list[StageConfig], init_from: str = "") -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        model=model_config("ov3-B/2"),
        objective=ObjectiveConfig(),
        data=DataConfig(source="webdataset", num_workers=8, text_context=80, caption_context=128),
        train=TrainConfig(
            stages=stages,
            optim=OptimConfig(),
            ckpt_every=2000,
            log_every=50,
            ema_decay=0.0,
            init_from=init_from,
        ),
        eval=EvalConfig(num_images=5000, batch_size=250),
    )


def pretrain_b2() -> ExperimentConfig:
    """The paper's B/2 pre-training stage at 128 px on Recap-DataComp shards (set data.path)."""
    return _paper("pretrain_b2", [pretrain_stage()])


def finetune_b2() -> ExperimentConfig:
    """The 256 px stage with LPIPS; set train.init_from to the pre-training run's export."""
    return _paper("finetune_b2", [finetune_stage()], init_from="runs/pretrain_b2/final")


def ov3_b2() -> ExperimentConfig:
    """Both stages in one run (positions re-gridded at the stage switch)."""
    return _paper("ov3_b2", [pretrain_stage(), finetune_stage()])


def demo_model() -> ModelConfig:
    """A small OpenVision 3 that learns the synthetic world on a laptop CPU."""
    return ModelConfig(
        encoder=EncoderConfig(width=192, depth=6, heads=3, embed_dim=128),
        decoder=DecoderConfig(width=192, depth=3, heads=3, noise_tau=0.8),
        text=TextEncoderConfig(width=128, depth=3, heads=2, embed_dim=128, context_length=32),
        # Captions are cut at 24 tokens (the main object is named first); only non-pad
        # targets reach the 49408-way vocabulary projection, the largest matmul on a CPU.
        caption=CaptionDecoderConfig(
            width=128, depth=3, heads=2, image_width=192, context_length=24, pack_targets=True
        ),
        vae=VAEConfig(pretrained="ov3-demo-vae", subfolder=""),
        name="ov3-demo",
    )


def demo() -> ExperimentConfig:
    """`ov3 demo`: all losses, two resolution stages (96 then 128 px), synthetic data, CPU.

    Sized to finish in under 15 minutes on 2 CPU cores. Shapes are too small to tell apart at
    64 px, so the first stage runs at 96 px. LPIPS stays off: its VGG weights cannot be
    downloaded offline (set objective.lpips_weights and the stage's lpips_weight).
    Peak LR = base LR x 32 / 256: 1e-3, then 7.5e-4.
    """
    return ExperimentConfig(
        name="demo",
        model=demo_model(),
        objective=ObjectiveConfig(),
        data=DataConfig(source="synthetic", num_workers=0, text_context=32, caption_context=24),
        train=TrainConfig(
            stages=[
                StageConfig(resolution=96, steps=250, batch_size=32, base_lr=8e-3, warmup_steps=30),
                StageConfig(
                    resolution=128, steps=280, batch_size=32, base_lr=6e-3, warmup_steps=20
                ),
            ],
            optim=OptimConfig(weight_decay=0.05),
            log_every=25,
            ckpt_every=200,
            keep_last=1,
        ),
        eval=EvalConfig(num_images=500, batch_size=100, caption_samples=12),
    )


def _smoke(base: Callable[[], ExperimentConfig]) -> ExperimentConfig:
    """Same code path as ``base`` with the tiny ``ov3-mu`` model, a few steps, synthetic data."""
    cfg = base()
    cfg.name = cfg.name + "_smoke"
    cfg.run_dir = f"runs/{cfg.name}"
    cfg.model = model_config("ov3-mu")
    cfg.data = DataConfig(
        source="synthetic",
        num_workers=0,
        text_context=32,
        caption_context=32,
        synthetic=SyntheticConfig(train_size=256, val_size=32),
    )
    resolutions = [32, 64]
    cfg.train.stages = [
        StageConfig(
            resolution=resolutions[min(i, 1)],
            steps=3,
            batch_size=4,
            base_lr=max(s.base_lr, 1e-4),
            warmup_steps=1,
            lpips_weight=0.0,
        )
        for i, s in enumerate(cfg.train.stages)
    ]
    cfg.train.log_every, cfg.train.ckpt_every = 1, 3
    cfg.train.init_from = ""
    cfg.eval = EvalConfig(num_images=8, batch_size=4, caption_samples=2)
    return cfg


_BASES: dict[str, Callable[[], ExperimentConfig]] = {
    "pretrain_b2": pretrain_b2,
    "finetune_b2": finetune_b2,
    "ov3_b2": ov3_b2,
    "demo": demo,
}
PRESETS: dict[str, Callable[[], ExperimentConfig]] = dict(_BASES)
PRESETS.update({f"{k}_smoke": (lambda k=k: _smoke(_BASES[k])) for k in _BASES})


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown experiment preset {name!r}; choose from {preset_names()}")
    return PRESETS[name]()
