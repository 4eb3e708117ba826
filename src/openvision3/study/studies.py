"""Named studies (as code, like the experiment presets): the paper's section-5 findings.

``paper-small``: the synthetic world, a small model, 96 px, on CPU cores; ``paper-small_smoke``
the same grid with a tiny model and a few steps (tests); ``paper-small-generation``: the
generation half of claim 4 (needs ``openvision3.generation``). A base preset and data flags
move the same study to GPUs and real data (``docs/study.md``).
"""

from __future__ import annotations

from collections.abc import Callable

from openvision3.data.loader import DataConfig
from openvision3.data.synthetic.world import SyntheticConfig
from openvision3.errors import ConfigError
from openvision3.losses.objective import ObjectiveConfig
from openvision3.models.caption import CaptionDecoderConfig
from openvision3.models.decoder import DecoderConfig
from openvision3.models.encoder import EncoderConfig
from openvision3.models.openvision3 import ModelConfig
from openvision3.models.presets import model_config
from openvision3.models.text import TextEncoderConfig
from openvision3.models.vae import VAEConfig
from openvision3.ov3.config import (
    EvalConfig,
    ExperimentConfig,
    OV3StageConfig,
    OV3TrainConfig,
    ov3_optim,
    peak_lr,
)
from openvision3.study.config import (
    ArmConfig,
    ClaimConfig,
    ComparisonConfig,
    GenerationStageConfig,
    ProbeEvalConfig,
    RealismConfig,
    StudyConfig,
)

ARMS = [
    ArmConfig("und-only", ("contrastive", "caption"), describe="understanding loss only"),
    ArmConfig("rec-only", ("reconstruction",), describe="reconstruction loss only"),
    ArmConfig("both", ("reconstruction", "contrastive", "caption"), describe="the paper's loss"),
    ArmConfig("frozen-init", (), describe="encoder trunk kept at initialisation; all heads probe"),
    ArmConfig(
        "pixel-vit",
        ("reconstruction", "contrastive", "caption"),
        pixels=True,
        describe="the paper's loss on a pixel ViT (patch 16 on pixels, no VAE)",
    ),
]
# Claim 3's band: the rec-only arm's contrastive-probe loss within 10% of frozen-init's.
CLAIM3_DELTA = 0.10


def paper_claims() -> list[ClaimConfig]:
    """Claims 1-4 of the paper's section 5, each with its metric, arms and direction."""
    return [
        ClaimConfig(
            "claim 1",
            "Training with the understanding loss alone also lowers the reconstruction loss.",
            [ComparisonConfig("rec", "und-only", "frozen-init", "lower")],
        ),
        ClaimConfig(
            "claim 2",
            "Understanding + reconstruction gives a lower reconstruction loss than "
            "reconstruction alone.",
            [ComparisonConfig("rec", "both", "rec-only", "lower")],
        ),
        ClaimConfig(
            "claim 3",
            "Reconstruction alone barely moves the contrastive loss.",
            [ComparisonConfig("contrastive", "rec-only", "frozen-init", "same", CLAIM3_DELTA)],
        ),
        ClaimConfig(
            "claim 4",
            "A pixel ViT (no VAE) reconstructs with higher PSNR but worse realism than the ViT "
            "on VAE latents.",
            [
                ComparisonConfig("psnr", "pixel-vit", "both", "higher"),
                ComparisonConfig("realism_fd", "pixel-vit", "both", "higher"),
            ],
        ),
    ]


def positive_control() -> ComparisonConfig:
    """Training the encoder with the contrastive loss beats a probe on a random encoder: if
    not reproduced, the study cannot tell effects apart (underpowered)."""
    return ComparisonConfig("contrastive", "und-only", "frozen-init", "lower")


def small_model() -> ModelConfig:
    """The demo model, narrower and shallower: 6x6 tokens of width 128 at 96 px."""
    return ModelConfig(
        encoder=EncoderConfig(width=128, depth=4, heads=2, embed_dim=64),
        decoder=DecoderConfig(width=128, depth=2, heads=2, noise_tau=0.8),
        text=TextEncoderConfig(width=64, depth=2, heads=2, embed_dim=64, context_length=32),
        caption=CaptionDecoderConfig(
            width=64, depth=2, heads=2, image_width=128, context_length=12, pack_targets=True
        ),
        vae=VAEConfig(pretrained="ov3-demo-vae", subfolder=""),
        name="ov3-study-small",
    )


def small_base(steps: int = 300, batch: int = 32) -> ExperimentConfig:
    """The base of ``paper-small``: the synthetic world at 96 px, the paper's loss weights."""
    return ExperimentConfig(
        name="paper-small",
        model=small_model(),
        # A quarter of each batch goes through the VAE decoder for the pixel term (the latent
        # term covers all of it): the decoder's backward is most of a CPU step.
        objective=ObjectiveConfig(pixel_loss_fraction=0.25),
        data=DataConfig(source="synthetic", num_workers=0, text_context=32, caption_context=12),
        train=OV3TrainConfig(
            stages=[
                OV3StageConfig(
                    resolution=96,
                    steps=steps,
                    batch_size=batch,
                    lr=peak_lr(8e-3, batch),
                    warmup_steps=30,
                )
            ],
            optim=ov3_optim(weight_decay=0.05),
            log_every=25,
            ckpt_every=100,
            keep_last=1,
        ),
        eval=EvalConfig(num_images=0),
    )


def paper_small() -> StudyConfig:
    """Claims 1-4 on the synthetic world: 5 arms x 3 seeds, 200 steps of 32 images at 96 px."""
    return StudyConfig(
        name="paper-small",
        base=small_base(steps=200),
        arms=list(ARMS),
        seeds=(0, 1, 2),
        claims=paper_claims(),
        control=positive_control(),
        eval=ProbeEvalConfig(num_images=256, batch_size=64, every=50),
        realism=RealismConfig(),
    )


def paper_small_smoke() -> StudyConfig:
    """The same grid and rules with the tiny ``ov3-mu`` model, 4 steps at 64 px (tests)."""
    cfg = paper_small()
    cfg.name, cfg.run_dir = "paper-small_smoke", "runs/study-paper-small_smoke"
    base = cfg.base
    base.model = model_config("ov3-mu")
    base.data = DataConfig(
        source="synthetic",
        num_workers=0,
        text_context=32,
        caption_context=32,
        synthetic=SyntheticConfig(train_size=256, val_size=32),
    )
    base.train.stages = [OV3StageConfig(resolution=64, steps=4, batch_size=4, lr=peak_lr(1e-3, 4))]
    base.train.log_every, base.train.ckpt_every = 2, 4
    cfg.eval = ProbeEvalConfig(num_images=8, batch_size=4, every=2)
    cfg.realism = RealismConfig(train_images=64, epochs=1, width=8, feature_dim=8)
    return cfg


def paper_small_generation() -> StudyConfig:
    """Claim 4's generation half: a class-conditional generator on the frozen tokens of the
    pixel-ViT and of the latent ViT (both arms of ``paper-small``), realism of its samples."""
    cfg = paper_small()
    cfg.name, cfg.run_dir = "paper-small-generation", "runs/study-paper-small-generation"
    cfg.arms = [a for a in ARMS if a.name in ("both", "frozen-init", "pixel-vit")]
    cfg.claims = [
        ClaimConfig(
            "claim 4 (generation)",
            "Generation from the pixel ViT's tokens is worse than from the latent ViT's.",
            [ComparisonConfig("generation_fd", "pixel-vit", "both", "higher")],
        )
    ]
    # Control: a generator on trained tokens beats one on a random encoder's tokens.
    cfg.control = ComparisonConfig("generation_fd", "both", "frozen-init", "lower")
    cfg.needs = "generation"
    return cfg


def paper_small_generation_smoke() -> StudyConfig:
    """``paper-small-generation`` on ``paper-small_smoke``'s tiny arms, a 2-step generator."""
    cfg = paper_small_smoke()
    gen = paper_small_generation()
    cfg.name, cfg.run_dir = (
        "paper-small-generation_smoke",
        "runs/study-paper-small-generation_smoke",
    )
    cfg.arms = [a for a in cfg.arms if a.name in ("both", "frozen-init", "pixel-vit")]
    cfg.claims, cfg.control, cfg.needs = gen.claims, gen.control, gen.needs
    cfg.generation = GenerationStageConfig(
        train_images=16, steps=2, batch_size=4, per_class=1, sample_steps=3, real_images=8
    )
    return cfg


STUDIES: dict[str, Callable[[], StudyConfig]] = {
    "paper-small": paper_small,
    "paper-small_smoke": paper_small_smoke,
    "paper-small-generation": paper_small_generation,
    "paper-small-generation_smoke": paper_small_generation_smoke,
}


def get_study(name: str) -> StudyConfig:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose from {sorted(STUDIES)}")
    return STUDIES[name]()
