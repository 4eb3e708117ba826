"""The demo's experiment presets: ``demo`` (2 CPU cores, under 15 minutes) and ``demo_gpu``
(one CUDA device, about 5 minutes), and the synthetic data every ``_smoke`` preset trains on.

Registered with the other presets in ``openvision3.configs`` (``ov3 presets``, ``ov3 train
demo``, ``ov3 demo --preset demo_gpu``), each with its ``_smoke`` variant.
"""

from __future__ import annotations

from openvision3.config import (
    EvalConfig,
    ExperimentConfig,
    OV3StageConfig,
    OV3TrainConfig,
    ov3_optim,
    peak_lr,
)
from openvision3.data.loader import DataConfig
from openvision3.demo.synthetic import SyntheticConfig
from openvision3.losses.objective import ObjectiveConfig
from openvision3.models.decoder import DecoderConfig
from openvision3.models.encoder import EncoderConfig
from openvision3.models.heads import CaptionDecoderConfig
from openvision3.models.openvision3 import ModelConfig
from openvision3.models.text import TextEncoderConfig
from openvision3.models.vae import VAEConfig


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

    Sized to finish in under 15 minutes on 2 CPU cores with room to spare: 470 steps (wall
    times: ``docs/demo-learning.md``). Shapes are too small to tell apart at 64 px, so the
    first stage runs at 96 px. LPIPS stays off: its VGG weights cannot be
    downloaded offline (set objective.lpips_weights and the stage's lpips_weight).
    Peak LR = base LR x 32 / 256: 1e-3, then 7.5e-4.
    """
    return ExperimentConfig(
        name="demo",
        model=demo_model(),
        objective=ObjectiveConfig(),
        data=DataConfig(source="synthetic", num_workers=0, text_context=32, caption_context=24),
        train=OV3TrainConfig(
            stages=[
                OV3StageConfig(
                    resolution=96, steps=220, batch_size=32, lr=peak_lr(8e-3, 32), warmup_steps=30
                ),
                OV3StageConfig(
                    resolution=128, steps=250, batch_size=32, lr=peak_lr(6e-3, 32), warmup_steps=20
                ),
            ],
            optim=ov3_optim(weight_decay=0.05),
            log_every=25,
            ckpt_every=200,
            keep_last=1,
        ),
        eval=EvalConfig(num_images=500, batch_size=100, caption_samples=12),
    )


def demo_gpu() -> ExperimentConfig:
    """`ov3 demo` on a CUDA device: the demo's world, checks and report with a wider, deeper
    model, 4x the batch and 4.5x the steps, bf16 autocast (``train.precision`` auto).

    Sized for at most 5 minutes on one H100/H200. ``ov3 bench train --preset demo_gpu
    --resolution 128`` counts 16.5 GFLOP per training image (fwd + bwd, the demo VAE's decoder
    included), so 2400 steps x 128 images are 5.1 PFLOP: under 30 s at 200 TFLOP/s. Blocks this
    small leave the step launch-bound, so the budget assumes about 80 ms a step (190 s of
    training) plus evaluation; ``scripts/gpu_check.sh`` measures it. Peak LR = base LR x 128 /
    256: 1e-3, then 7.5e-4, as in ``demo``.
    """
    cfg = demo()
    cfg.name, cfg.run_dir = "demo_gpu", "runs/demo_gpu"
    cfg.model = ModelConfig(
        encoder=EncoderConfig(width=384, depth=8, heads=6, embed_dim=256),
        decoder=DecoderConfig(width=384, depth=6, heads=6, noise_tau=0.8),
        text=TextEncoderConfig(width=256, depth=6, heads=4, embed_dim=256, context_length=32),
        caption=CaptionDecoderConfig(
            width=256, depth=4, heads=4, image_width=384, context_length=24, pack_targets=True
        ),
        vae=VAEConfig(pretrained="ov3-demo-vae", subfolder=""),
        name="ov3-demo-gpu",
    )
    cfg.data.num_workers = 8
    cfg.train.stages = [
        OV3StageConfig(
            resolution=96, steps=1200, batch_size=128, lr=peak_lr(2e-3, 128), warmup_steps=100
        ),
        OV3StageConfig(
            resolution=128, steps=1200, batch_size=128, lr=peak_lr(1.5e-3, 128), warmup_steps=50
        ),
    ]
    cfg.train.log_every, cfg.train.ckpt_every = 50, 600
    cfg.eval = EvalConfig(num_images=1000, batch_size=250, caption_samples=12)
    return cfg


def smoke_data() -> DataConfig:
    """The data of every ``_smoke`` preset: a small synthetic world (256 train, 32 val scenes)."""
    return DataConfig(
        source="synthetic",
        num_workers=0,
        text_context=32,
        caption_context=32,
        synthetic=SyntheticConfig(train_size=256, val_size=32),
    )
