"""OpenVision 3's experiment presets: the paper's recipe, the decoder on a released encoder, and
the demo's. Each has a ``_smoke`` variant (the tiny ``ov3-mu`` model, a few steps, synthetic data)
that runs the same code path in seconds on a CPU. ``openvision3.configs`` names them with the
other families' presets (``ov3 presets``).

The paper's recipe (Table 1; 1 epoch = 1.28M samples):
  pre-train  128 px, batch 8192, base LR 8e-6, 4000 epochs, warmup 40, no LPIPS
  fine-tune  256 px, batch 4096, base LR 4e-7,  400 epochs, warmup 20, LPIPS 0.5
The fine-tune runs at 224 px for understanding (the released ``base-patch2-28``: a 28 x 28
latent grid) or 256 px for generation; ``*_b2_224`` is the former. The paper states base LRs
for a batch of 256: ``peak_lr`` scales them to the stage's batch (this family's rule; the
engine takes the absolute peak).

The demo's presets: ``demo`` (2 CPU cores, under 15 minutes) and ``demo_gpu`` (one CUDA
device, about 5 minutes); ``smoke_data`` is the synthetic data every ``_smoke`` preset trains on.

``--model-preset NAME`` swaps the whole model of a preset for a named model preset (``ov3-mu``,
``ov3-S/2``, ``ov3-B/2``, ``ov3-L/2``, ...) before the other flags (``apply_model_preset``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from openvision3.data.loader import DataConfig
from openvision3.data.synthetic.world import SyntheticConfig
from openvision3.errors import ConfigError
from openvision3.losses.objective import ObjectiveConfig
from openvision3.models.caption import CaptionDecoderConfig
from openvision3.models.decoder import DecoderConfig
from openvision3.models.encoder import EncoderConfig
from openvision3.models.openvision3 import ModelConfig
from openvision3.models.presets import PRESETS as MODEL_PRESETS
from openvision3.models.presets import model_config
from openvision3.models.text import TextEncoderConfig
from openvision3.models.vae import VAEConfig
from openvision3.ov3.config import (
    EvalConfig,
    ExperimentConfig,
    OV3StageConfig,
    OV3TrainConfig,
    base_lr,
    ov3_optim,
    peak_lr,
)

EPOCH = 1_281_167  # ImageNet-1k train images: the paper's epoch unit (about 1.28M samples)


def _steps(epochs: float, batch: int) -> int:
    return max(1, math.ceil(epochs * EPOCH / batch))


def pretrain_stage() -> OV3StageConfig:
    return OV3StageConfig(
        resolution=128,
        steps=_steps(4000, 8192),
        batch_size=8192,
        lr=peak_lr(8e-6, 8192),
        warmup_steps=_steps(40, 8192),
        lpips_weight=0.0,
    )


def finetune_stage(resolution: int = 256) -> OV3StageConfig:
    return OV3StageConfig(
        resolution=resolution,
        steps=_steps(400, 4096),
        batch_size=4096,
        lr=peak_lr(4e-7, 4096),
        warmup_steps=_steps(20, 4096),
        lpips_weight=0.5,
    )


def _paper(
    name: str, stages: list[OV3StageConfig], init_from: str = "", model: str = "ov3-B/2"
) -> ExperimentConfig:
    """A paper-recipe experiment on webdataset shards; ``--data.path`` is set on the command
    line (checked after it by ``ExperimentConfig.validate``)."""
    return ExperimentConfig(
        name=name,
        model=model_config(model),
        objective=ObjectiveConfig(),
        data=DataConfig(source="webdataset", num_workers=8, text_context=80, caption_context=128),
        train=OV3TrainConfig(
            stages=stages,
            optim=ov3_optim(),
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


def finetune_b2_224() -> ExperimentConfig:
    """The fine-tune stage at 224 px (the released ``openvision3-vit-base-patch2-28``: a 28 x 28
    latent grid, 14 x 14 tokens), the paper's resolution for understanding."""
    return _paper("finetune_b2_224", [finetune_stage(224)], init_from="runs/pretrain_b2/final")


def ov3_b2_224() -> ExperimentConfig:
    """Both stages, the second at 224 px (the released ``base-patch2-28``)."""
    return _paper("ov3_b2_224", [pretrain_stage(), finetune_stage(224)])


# The paper reports L/2 (Tables 2-4) but gives its batch and LR only once, for the recipe as a
# whole. Choice: the L/2 presets use the B/2 numbers (batch 8192 / 4096, base LR 8e-6 / 4e-7)
# and fine-tune at 256 px, the paper's resolution for L.
def pretrain_l2() -> ExperimentConfig:
    """L/2 pre-training at 128 px; batch and LR as B/2 (a choice: the paper gives none for L)."""
    return _paper("pretrain_l2", [pretrain_stage()], model="ov3-L/2")


def finetune_l2() -> ExperimentConfig:
    """L/2 fine-tuning at 256 px with LPIPS; batch and LR as B/2 (a choice, as for pretrain_l2)."""
    return _paper(
        "finetune_l2", [finetune_stage()], init_from="runs/pretrain_l2/final", model="ov3-L/2"
    )


def ov3_l2() -> ExperimentConfig:
    """Both L/2 stages in one run; batch and LR as B/2 (a choice, as for pretrain_l2)."""
    return _paper("ov3_l2", [pretrain_stage(), finetune_stage()], model="ov3-L/2")


RELEASED_B2 = "UCSC-VLAA/openvision3-vit-base-patch2-32"


def decoder_b2() -> ExperimentConfig:
    """The reconstruction decoder (ViT-B/1) on a frozen released encoder (RAE's stage 1): the
    authors released the encoder only, so this is how their weights get a decoder and, from
    it, reconstructions and generated images.

    ``--train.init-from`` names the released encoder (default the B/2 at 256 px, a hub id or a
    local folder); the model's encoder takes its architecture and weights and stays frozen
    (``freeze=("encoder",)``). Losses: the paper's reconstruction terms (pixel L1 + 0.4 latent
    L1 + 0.5 LPIPS) with the decoder's noise (tau 0.8). The understanding heads are off; with
    ``--objective.und-weight 1`` the text tower and caption decoder train too, on the frozen
    tokens. Choices (the paper gives no decoder-only recipe): 256 px, batch 512, 16 epochs as
    RAE trains its decoders, base LR 1e-4 (peak 2e-4), warmup 1 epoch.
    """
    steps = _steps(16, 512)
    stage = OV3StageConfig(
        resolution=256,
        steps=steps,
        batch_size=512,
        lr=peak_lr(1e-4, 512),
        warmup_steps=_steps(1, 512),
        lpips_weight=0.5,
        freeze=("encoder",),
    )
    cfg = _paper("decoder_b2", [stage], init_from=RELEASED_B2)
    cfg.objective = ObjectiveConfig(und_weight=0.0)
    return cfg


def _smoke(base: Callable[[], ExperimentConfig]) -> ExperimentConfig:
    """Same code path as ``base`` with the tiny ``ov3-mu`` model, a few steps, synthetic data."""
    cfg = base()
    cfg.name = cfg.name + "_smoke"
    cfg.run_dir = f"runs/{cfg.name}"
    cfg.model = model_config("ov3-mu")
    cfg.data = smoke_data()
    resolutions = [32, 64]
    # The base preset's base LR (its batches are powers of two: base_lr undoes peak_lr
    # exactly), at least 1e-4, scaled to the smoke batch.
    cfg.train.stages = [
        OV3StageConfig(
            resolution=resolutions[min(i, 1)],
            steps=3,
            batch_size=4,
            lr=peak_lr(max(base_lr(s), 1e-4), 4),
            warmup_steps=1,
            lpips_weight=0.0,
            freeze=s.freeze,
        )
        for i, s in enumerate(cfg.train.stages)
    ]
    cfg.train.log_every, cfg.train.ckpt_every = 1, 3
    cfg.train.init_from = ""
    cfg.eval = EvalConfig(num_images=8, batch_size=4, caption_samples=2)
    return cfg


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


_BASES: dict[str, Callable[[], ExperimentConfig]] = {
    "pretrain_b2": pretrain_b2,
    "finetune_b2": finetune_b2,
    "ov3_b2": ov3_b2,
    "finetune_b2_224": finetune_b2_224,
    "ov3_b2_224": ov3_b2_224,
    "pretrain_l2": pretrain_l2,
    "finetune_l2": finetune_l2,
    "ov3_l2": ov3_l2,
    "decoder_b2": decoder_b2,
    "demo": demo,
    "demo_gpu": demo_gpu,
}
PRESETS: dict[str, Callable[[], ExperimentConfig]] = dict(_BASES)
PRESETS.update({f"{k}_smoke": (lambda k=k: _smoke(_BASES[k])) for k in _BASES})


def apply_model_preset(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    """``cfg`` with its whole model swapped for the model preset ``name`` (``ov3-mu``,
    ``ov3-B/2``, ...); texts are then tokenised to at most the new towers' context lengths."""
    if name not in MODEL_PRESETS:
        raise ConfigError(
            f"--model-preset: unknown model preset {name!r}; choose from {sorted(MODEL_PRESETS)}"
        )
    cfg.model = model_config(name)
    if cfg.model.text is not None:
        cfg.data.text_context = min(cfg.data.text_context, cfg.model.text.context_length)
    if cfg.model.caption is not None:
        cfg.data.caption_context = min(cfg.data.caption_context, cfg.model.caption.context_length)
    return cfg
