"""Every preset's effective AdamW recipe, pinned: the peak LR of each stage, the betas and the
weight decay. The engine's ``OptimConfig`` takes AdamW's own defaults, so each family's presets
write out their recipe; these are the values their runs have always trained with (the smoke
runs' weights depend on them bit for bit)."""

import pytest

from openvision3.configs import get_preset, preset_names
from openvision3.ov3.config import peak_lr

OV3 = (0.9, 0.95)  # OpenVision's AdamW betas (config.ov3_optim)
LLAVA = (0.9, 0.999)  # LLaVA-1.5's (AdamW's own)

# name: (peak LR of each stage, betas, weight decay)
RECIPES = {
    "decoder_b2": ((0.0002,), OV3, 0.2),
    "decoder_b2_smoke": ((1.5625e-06,), OV3, 0.2),
    "demo": ((0.001, 0.00075), OV3, 0.05),
    "demo_generation": ((0.001,), OV3, 0.0),
    "demo_generation_smoke": ((1.5625e-05,), OV3, 0.0),
    "demo_gpu": ((0.001, 0.00075), OV3, 0.05),
    "demo_gpu_smoke": ((3.125e-05, 2.34375e-05), OV3, 0.05),
    "demo_smoke": ((0.000125, 9.375e-05), OV3, 0.05),
    "dit_dh_xl_ov3_b2": ((0.0002,), OV3, 0.0),
    "dit_dh_xl_ov3_b2_smoke": ((1.5625e-05,), OV3, 0.0),
    "finetune_b2": ((6.4e-06,), OV3, 0.2),
    "finetune_b2_224": ((6.4e-06,), OV3, 0.2),
    "finetune_b2_224_smoke": ((1.5625e-06,), OV3, 0.2),
    "finetune_b2_smoke": ((1.5625e-06,), OV3, 0.2),
    "finetune_l2": ((6.4e-06,), OV3, 0.2),
    "finetune_l2_smoke": ((1.5625e-06,), OV3, 0.2),
    "llava15_ov3_b2_stage1": ((0.001,), LLAVA, 0.0),
    "llava15_ov3_b2_stage1_smoke": ((1.5625e-05,), LLAVA, 0.0),
    "llava15_ov3_b2_stage2": ((2e-05,), LLAVA, 0.0),
    "llava15_ov3_b2_stage2_lora": ((0.0002,), LLAVA, 0.0),
    "llava15_ov3_b2_stage2_lora_smoke": ((1.5625e-05,), LLAVA, 0.0),
    "llava15_ov3_b2_stage2_smoke": ((1.5625e-05,), LLAVA, 0.0),
    "ov3_b2": ((0.000256, 6.4e-06), OV3, 0.2),
    "ov3_b2_224": ((0.000256, 6.4e-06), OV3, 0.2),
    "ov3_b2_224_smoke": ((1.5625e-06, 1.5625e-06), OV3, 0.2),
    "ov3_b2_smoke": ((1.5625e-06, 1.5625e-06), OV3, 0.2),
    "ov3_l2": ((0.000256, 6.4e-06), OV3, 0.2),
    "ov3_l2_smoke": ((1.5625e-06, 1.5625e-06), OV3, 0.2),
    "pretrain_b2": ((0.000256,), OV3, 0.2),
    "pretrain_b2_smoke": ((1.5625e-06,), OV3, 0.2),
    "pretrain_l2": ((0.000256,), OV3, 0.2),
    "pretrain_l2_smoke": ((1.5625e-06,), OV3, 0.2),
}


def test_every_preset_is_pinned():
    assert sorted(RECIPES) == preset_names()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_preset_writes_out_its_adamw_recipe(name):
    peaks, betas, weight_decay = RECIPES[name]
    cfg = get_preset(name)
    # Exact: the same floats the runs have always trained with, not approximately.
    assert tuple(s.lr for s in cfg.train.stages) == peaks
    assert cfg.train.optim.betas == betas and cfg.train.optim.weight_decay == weight_decay
    assert cfg.train.optim.eps == 1e-8


def test_openvision_peak_is_base_times_batch_over_256():
    assert peak_lr(8e-6, 8192) == pytest.approx(2.56e-4)
    assert peak_lr(4e-7, 4096) == pytest.approx(6.4e-6)
    with pytest.raises(ValueError):
        peak_lr(1e-3, 0)
