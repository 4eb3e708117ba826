"""LLaVA-1.5's two stages on OpenVision 3-B/2 tokens (LLaVA's ``scripts/v1_5/pretrain.sh`` and
``finetune.sh``; README table): 1 epoch each, AdamW (0.9, 0.999) without weight decay, 3 %
warm-up, cosine to 0, grad-norm clip 1.0, bf16, FSDP2 over the LM's decoder layers, activation
checkpointing. LLaVA's global batches and LRs: stage 1 256 at 1e-3 (LCS-558K captions), stage 2
128 at 2e-5 (the 665K instruction mix). The ``_smoke`` variants run the same code on the tiny random VLM and the
synthetic world in seconds.

``llava15_ov3_b2_stage2_lora`` is LLaVA's ``finetune_lora.sh``: LoRA r 128, alpha 256 on every
Linear of the LM (its own weights frozen), LR 2e-4, the projector at 2e-5.

Before stage 1: ``ov3 vlm build --vision <encoder> --llm lmsys/vicuna-7b-v1.5 --out
runs/llava15_ov3_b2/vlm``. Stage 2 reads stage 1's ``final/``.
"""

from __future__ import annotations

import math

from openvision3.train.config import StageConfig, TrainConfig
from openvision3.train.optim import OptimConfig
from openvision3.understanding.lora import LoraSettings
from openvision3.understanding.task import TINY, LlavaRunConfig, VLMDataConfig

STAGE1_SAMPLES = 558_128  # blip_laion_cc_sbu_558k.json
STAGE2_SAMPLES = 665_298  # llava_v1_5_mix665k.json
FREEZE_ALL_BUT_PROJECTOR = ("model.vision_tower", "model.language_model", "lm_head")
FREEZE_TOWER = ("model.vision_tower",)

# What ``--model-preset`` is refused with (``configs/presets.py``): this family's model flags.
MODEL_FLAGS = "--model names its VLM folder (`ov3 vlm build --vision EXPORT ...`)"


def _stage(samples: int, batch: int, lr: float, freeze: tuple[str, ...]) -> StageConfig:
    steps = math.ceil(samples / batch)
    return StageConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup_steps=math.ceil(0.03 * steps),
        freeze=freeze,
    )


def _train(stage: StageConfig) -> TrainConfig:
    return TrainConfig(
        stages=[stage],
        optim=OptimConfig(weight_decay=0.0, betas=(0.9, 0.999), min_lr_ratio=0.0, grad_clip=1.0),
        precision="bf16",
        parallel="fsdp",
        activation_checkpointing=True,
        log_every=10,
        ckpt_every=500,
    )


def llava15_ov3_b2_stage1() -> LlavaRunConfig:
    """LLaVA-1.5 stage 1 on OV3-B/2: the projector alone on LCS-558K captions."""
    return LlavaRunConfig(
        name="llava15_ov3_b2_stage1",
        model="runs/llava15_ov3_b2/vlm",
        template="plain",
        data=VLMDataConfig(
            json_path="data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
            image_folder="data/LLaVA-Pretrain/images",
        ),
        train=_train(_stage(STAGE1_SAMPLES, 256, 1e-3, FREEZE_ALL_BUT_PROJECTOR)),
    )


def llava15_ov3_b2_stage2() -> LlavaRunConfig:
    """LLaVA-1.5 stage 2 on OV3-B/2: projector + LLM on the 665K instruction mix."""
    return LlavaRunConfig(
        name="llava15_ov3_b2_stage2",
        model="runs/llava15_ov3_b2_stage1/final",
        template="vicuna_v1",
        data=VLMDataConfig(json_path="data/llava_v1_5_mix665k.json", image_folder="data"),
        train=_train(_stage(STAGE2_SAMPLES, 128, 2e-5, FREEZE_TOWER)),
    )


def llava15_ov3_b2_stage2_lora() -> LlavaRunConfig:
    """LLaVA-1.5 stage 2 with LoRA (``finetune_lora.sh``): adapters r 128 / alpha 256 / dropout
    0.05 on the LM at LR 2e-4, the projector at 2e-5; the export merges the adapters."""
    cfg = llava15_ov3_b2_stage2()
    cfg.name, cfg.run_dir = "llava15_ov3_b2_stage2_lora", "runs/llava15_ov3_b2_stage2_lora"
    cfg.lora = LoraSettings(r=128, alpha=256.0, dropout=0.05)
    cfg.train.stages = [_stage(STAGE2_SAMPLES, 128, 2e-4, FREEZE_TOWER)]
    cfg.train.optim.lr_scale = {"model.multi_modal_projector": 0.1}
    return cfg


def smoke(cfg: LlavaRunConfig) -> LlavaRunConfig:
    """The same run on the tiny random VLM, synthetic scenes rendered at 32 px, 3 steps."""
    cfg.name += "_smoke"
    cfg.run_dir = f"runs/{cfg.name}"
    cfg.model = TINY
    questions = "describe" if cfg.template == "plain" else "vqa"
    cfg.data = VLMDataConfig(source="synthetic", questions=questions, synthetic_size=64)
    s = cfg.train.stages[0]
    cfg.train.stages = [
        StageConfig(steps=3, batch_size=4, lr=1e-3 / 64, warmup_steps=1, freeze=s.freeze)
    ]
    cfg.train.precision, cfg.train.parallel = "auto", "auto"
    cfg.train.activation_checkpointing = False
    cfg.train.log_every, cfg.train.ckpt_every = 1, 3
    if cfg.lora.r:
        cfg.lora.r = 8
    return cfg


PRESETS = {
    "llava15_ov3_b2_stage1": llava15_ov3_b2_stage1,
    "llava15_ov3_b2_stage2": llava15_ov3_b2_stage2,
    "llava15_ov3_b2_stage2_lora": llava15_ov3_b2_stage2_lora,
    "llava15_ov3_b2_stage1_smoke": lambda: smoke(llava15_ov3_b2_stage1()),
    "llava15_ov3_b2_stage2_smoke": lambda: smoke(llava15_ov3_b2_stage2()),
    "llava15_ov3_b2_stage2_lora_smoke": lambda: smoke(llava15_ov3_b2_stage2_lora()),
}
