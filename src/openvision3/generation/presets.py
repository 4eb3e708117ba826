"""DiT-DH model presets and generation experiment presets.

Model sizes (RAE, "a 2-layer, 2048-dim DiT^DH head for all models"): S and XL are RAE's
released configs; B and L take the standard DiT backbone sizes (RAE's repository has no B or L
config). Counted on the meta device with 1000 classes on 16x16 tokens: XL 838.7M (768-d tokens,
OV3-B) / 840.0M (1024-d, OV3-L); S 196.5M / 197.6M; B 294.3M / 295.5M; L 621.7M / 623.1M;
the plain DiT-XL baseline (no head) 677.2M on 768-d tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from openvision3.generation.models import DiTDHConfig
from openvision3.generation.task import FlowConfig, GenerationConfig, TokenDataConfig
from openvision3.train.config import StageConfig, TrainConfig
from openvision3.train.optim import OptimConfig

BACKBONES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
EPOCH = 1_281_167  # ImageNet-1k train images

# What ``--model-preset`` is refused with (``configs/presets.py``): this family's model flags.
MODEL_FLAGS = "its DiT-DH is set by --model.* flags"


def dit_dh(size: str, channels: int = 768, input_size: int = 16, **kw) -> DiTDHConfig:
    """DiT-DH-{S,B,L,XL} on (channels, input_size, input_size) tokens, head 2048 / 2 / 16."""
    w, d, k = BACKBONES[size]
    return DiTDHConfig(in_channels=channels, input_size=input_size, width=w, depth=d, heads=k, **kw)


def dit_xl(channels: int = 768, input_size: int = 16, **kw) -> DiTDHConfig:
    """The plain DiT-XL baseline, RAE's ``LightningDiT`` (``learn_sigma=False``): no head; its
    parameter names, forward and init."""
    return dit_dh("XL", channels, input_size, head_depth=0, **kw)


MODEL_PRESETS: dict[str, Callable[[], DiTDHConfig]] = {
    **{f"dit-dh-{s.lower()}": (lambda s=s: dit_dh(s, 768)) for s in BACKBONES},
    **{f"dit-dh-{s.lower()}-1024": (lambda s=s: dit_dh(s, 1024)) for s in BACKBONES},
    "dit-xl": dit_xl,
    "dit-xl-1024": lambda: dit_xl(1024),
    "dit-dh-demo": lambda: demo_dit(),
}


def demo_dit() -> DiTDHConfig:
    """DiT-DH-demo for the demo's 8x8x192 tokens: backbone 192 / 4 / 3, head 256 / 2 / 4, 72
    classes (main object colour x grid cell); widths >= the token dimension (RAE's rule). The
    label table starts at std 1 instead of RAE's 0.02: in a 400-step run the small rows barely
    move and the generator ignores its labels (``docs/generation.md``)."""
    return DiTDHConfig(
        in_channels=192, input_size=8, width=192, depth=4, heads=3,
        head_width=256, head_depth=2, head_heads=4, num_classes=72, class_init_std=1.0,
    )  # fmt: skip


def dit_dh_xl_ov3_b2() -> GenerationConfig:
    """The paper's generation row: DiT-DH-XL on OV3-B/2 tokens (16x16x768, ImageNet 256 px),
    RAE's recipe: batch 1024, lr 2e-4 constant for 40 epochs then linear to 2e-5 at 800, EMA
    0.9995 without warm-up, clip 1, bf16. Set --data.cache (tokens cached with
    ``ov3 cache-latents ... --tokens <OV3-B/2 export> --flip``) and --decoder."""
    steps = math.ceil(800 * EPOCH / 1024)
    train = TrainConfig(
        stages=[StageConfig(steps=steps, batch_size=1024, lr=2e-4)],
        optim=OptimConfig(
            betas=(0.9, 0.95),
            weight_decay=0.0,
            decay="linear",
            hold_ratio=40 / 800,
            min_lr_ratio=0.1,
            grad_clip=1.0,
        ),  # fmt: skip
        ema_decay=0.9995,
        ema_warmup=False,
        ckpt_every=5000,
        log_every=100,
    )
    return GenerationConfig(
        name="dit_dh_xl_ov3_b2",
        train=train,
        model=dit_dh("XL", 768),
        data=TokenDataConfig(hflip=0.5, num_workers=8),
        flow=FlowConfig(),
    )


def demo_generation() -> GenerationConfig:
    """The CPU demo's generator: DiT-DH-demo on the frozen demo model's 128 px tokens, batch 64,
    400 steps, AdamW lr 1e-3 (20 warm-up steps, then constant), EMA 0.99 with warm-up (0.9995
    would barely move in 400 steps)."""
    train = TrainConfig(
        stages=[StageConfig(steps=400, batch_size=64, lr=1e-3, warmup_steps=20)],
        optim=OptimConfig(betas=(0.9, 0.95), weight_decay=0.0, decay="linear", min_lr_ratio=1.0,
                          grad_clip=1.0),
        ema_decay=0.99,
        ema_warmup=True,
        ckpt_every=100,
        log_every=20,
        device="cpu",
    )  # fmt: skip
    return GenerationConfig(
        name="demo_generation",
        run_dir="runs/demo_generation",
        train=train,
        model=demo_dit(),
        data=TokenDataConfig(label_field="color_cell", in_memory=True),
    )


def _smoke(base: Callable[[], GenerationConfig]) -> GenerationConfig:
    """``base`` with a tiny DiT-DH on 4x4x16 tokens, 2 steps of batch 4."""
    cfg = base()
    cfg.name += "_smoke"
    cfg.run_dir = f"runs/{cfg.name}"
    cfg.model = DiTDHConfig(
        in_channels=16, input_size=4, width=32, depth=2, heads=2,
        head_width=48, head_depth=1, head_heads=2, num_classes=cfg.model.num_classes,
    )  # fmt: skip
    cfg.flow.shift = 1.0
    cfg.train.stages = [StageConfig(steps=2, batch_size=4, lr=1e-3 / 64)]
    cfg.train.ckpt_every, cfg.train.log_every, cfg.train.device = 2, 1, "cpu"
    cfg.data.num_workers = 0
    return cfg


_BASES = {"dit_dh_xl_ov3_b2": dit_dh_xl_ov3_b2, "demo_generation": demo_generation}
PRESETS: dict[str, Callable[[], GenerationConfig]] = dict(_BASES)
PRESETS.update({f"{k}_smoke": (lambda k=k: _smoke(_BASES[k])) for k in _BASES})
