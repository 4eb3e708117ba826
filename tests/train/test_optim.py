import math

import pytest
import torch
from torch import nn

from openvision3.train.optim import (
    OptimConfig,
    build_multi_stage_scheduler,
    build_optimizer,
    build_scheduler,
    lr_lambda,
    multi_stage_schedule,
    param_groups,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.logit_scale = nn.Parameter(torch.ones(1))
        self.embed = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


class ToyViT(Toy):
    """Declares its exempt parameters the way timm's ViTs do."""

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


class Wrapper(nn.Module):
    """Stands in for DDP: the model under ``module``, its names prefixed ``module.``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_honour_the_models_no_weight_decay_names():
    model = ToyViT()
    decay, no_decay = param_groups(model, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert _names(model, decay["params"]) == {"embed.weight", "proj.weight"}
    assert _names(model, no_decay["params"]) == {
        "pos_embed",
        "cls_token",
        "logit_scale",
        "proj.bias",
        "norm.weight",
        "norm.bias",
    }
    wrapped = Wrapper(ToyViT())  # asked through the wrapper, matched without its prefix
    decay, _ = param_groups(wrapped, 0.2)
    assert _names(wrapped, decay["params"]) == {"module.embed.weight", "module.proj.weight"}


def test_param_groups_without_the_hook_exempt_only_ndim_below_2():
    model = Toy()  # no no_weight_decay(): position table and class token are matrices
    decay, no_decay = param_groups(model, 0.2)
    assert _names(model, decay["params"]) == {
        "pos_embed",
        "cls_token",
        "embed.weight",
        "proj.weight",
    }
    assert _names(model, no_decay["params"]) == {
        "logit_scale",
        "proj.bias",
        "norm.weight",
        "norm.bias",
    }


def test_openvision3_declares_its_tables_tokens_and_temperature():
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.models.presets import model_config

    model = OpenVision3(model_config("ov3-mu"), vae=None)
    names = model.no_weight_decay()  # ov3-mu: sin-cos encoder positions (no parameter)
    assert names == {"encoder.cls_token", "text.pos_embed", "captioner.pos_embed", "logit_scale"}
    decay, no_decay = param_groups(model, 0.2)
    assert not names & _names(model, decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])


def test_optim_config_takes_adamws_own_defaults():
    reference = torch.optim.AdamW([nn.Parameter(torch.zeros(1))]).defaults
    cfg = OptimConfig()
    assert (cfg.betas, cfg.weight_decay, cfg.eps) == (
        reference["betas"],
        reference["weight_decay"],
        reference["eps"],
    )


def test_optim_config_validation():
    assert OptimConfig(betas=[0.9, 0.99]).betas == (0.9, 0.99)
    for bad in (
        {"weight_decay": -1.0},
        {"betas": (0.9, 1.0)},
        {"eps": 0.0},
        {"min_lr_ratio": 1.5},
        {"grad_clip": 0.0},
    ):
        with pytest.raises(ValueError):
            OptimConfig(**bad)


def test_build_optimizer():
    cfg = OptimConfig(weight_decay=0.3, betas=(0.8, 0.9), eps=1e-6)
    opt = build_optimizer(Toy(), cfg, lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    assert all(g["lr"] == 1e-3 and g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    assert not opt.param_groups[0]["fused"]  # CPU parameters: not fused unless asked


def test_lr_lambda_warmup_cosine():
    w, t, m = 10, 110, 0.1
    assert lr_lambda(0, w, t, m) == pytest.approx(0.1)  # (0 + 1) / 10: starts near 0
    assert lr_lambda(4, w, t, m) == pytest.approx(0.5)
    assert lr_lambda(w - 1, w, t, m) == 1.0  # warmup ends at the peak
    assert lr_lambda(w, w, t, m) == 1.0  # cosine starts at the peak
    assert lr_lambda(60, w, t, m) == pytest.approx(m + (1 - m) * 0.5)  # half way
    assert lr_lambda(35, w, t, m) == pytest.approx(m + (1 - m) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert m < lr_lambda(t - 1, w, t, m) < m + 1e-3
    assert lr_lambda(t, w, t, m) == m and lr_lambda(10 * t, w, t, m) == m
    assert lr_lambda(0, 0, 10) == 1.0  # no warmup


def test_build_scheduler_drives_optimizer_lr():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=2e-3)
    sched = build_scheduler(opt, warmup_steps=3, total_steps=8, min_lr_ratio=0.0)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert seen == pytest.approx([2e-3 * lr_lambda(s, 3, 8) for s in range(10)])
    assert seen[2] == pytest.approx(2e-3) and seen[8] == seen[9] == 0.0
    with pytest.raises(ValueError):
        build_scheduler(opt, warmup_steps=9, total_steps=8)


def test_multi_stage_schedule_boundaries():
    fn = multi_stage_schedule([(10, 1e-3, 2), (6, 5e-4, 3)], min_lr_ratio=0.1)
    assert fn(0) == pytest.approx(0.5e-3)
    assert fn(1) == pytest.approx(1e-3)
    last = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8))  # stage-1 cosine at 7/8
    assert fn(9) == pytest.approx(1e-3 * last)
    assert fn(10) == pytest.approx(5e-4 / 3)  # stage 2 warms up from ~0 again
    assert fn(12) == pytest.approx(5e-4)
    assert fn(16) == pytest.approx(5e-5) and fn(1000) == pytest.approx(5e-5)
    with pytest.raises(ValueError):
        multi_stage_schedule([(5, 1e-3, 6)])


def test_multi_stage_scheduler_lr_is_exact_and_pure():
    stages = [(4, 1e-3, 1), (4, 2e-4, 2)]
    fn = multi_stage_schedule(stages)
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=123.0)
    sched = build_multi_stage_scheduler(opt, stages)
    for step in range(10):
        assert opt.param_groups[0]["lr"] == fn(step)  # exactly, not approximately
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    # A scheduler rebuilt from the state dict continues the same pure function of the step.
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
    sched2 = build_multi_stage_scheduler(opt2, stages)
    sched2.load_state_dict(sched.state_dict())
    sched2.step()
    assert sched2.get_last_lr()[0] == fn(11)


def test_lr_scale_gives_a_module_its_own_lr_through_the_schedule():
    model = Toy()
    cfg = OptimConfig(weight_decay=0.1, lr_scale={"proj": 0.1, "proj.bias": 3.0})
    groups = param_groups(model, cfg.weight_decay, cfg.lr_scale)
    by_name = {g["name"]: _names(model, g["params"]) for g in groups}
    assert by_name["decay@0.1"] == {"proj.weight"}  # the longest matching name wins
    assert by_name["no_decay@3"] == {"proj.bias"}
    assert "proj.weight" not in by_name["decay"] and "embed.weight" in by_name["decay"]
    stages = [(6, 1e-3, 2)]
    fn = multi_stage_schedule(stages)
    opt = build_optimizer(model, cfg, lr=1.0)
    sched = build_multi_stage_scheduler(opt, stages)
    for step in range(6):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(fn(step) * g["lr_scale"], rel=1e-12)
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="no parameter under"):
        param_groups(model, 0.1, {"nothing": 0.5})
    with pytest.raises(ValueError, match="lr_scale"):
        OptimConfig(lr_scale={"proj": 0.0})
