"""AdamW with decoupled weight decay on weight matrices only, and warmup + cosine schedules.

``OptimConfig`` starts from AdamW's own defaults (``torch.optim.AdamW``: betas (0.9, 0.999),
weight decay 0.01); each family's presets write out their recipe (OpenVision 3's in
``config.ov3_optim``). Which parameters take no weight decay the model says, timm's way
(``no_weight_decay()`` returning parameter names, ``timm/optim/_param_groups.py``); every
parameter with ``ndim < 2`` (biases, norm gains) takes none either.

Every schedule here is a pure function of the global step, so a resumed run sees exactly the
learning rates of an uninterrupted one. The optimizer's ``lr`` is the scheduled value itself
(``LambdaLR`` multiplies a base LR by the schedule's value; multi-stage schedules use a base LR
of 1.0, so ``1.0 * lr`` is exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

DECAYS = ("cosine", "linear")


@dataclass
class OptimConfig:
    """AdamW and schedule hyper-parameters shared by every stage (each stage sets its own peak
    LR and warmup: `StageConfig`); the defaults are AdamW's own. `min_lr_ratio`: the
    cosine's floor as a fraction of the peak. `grad_clip` is the max global grad-norm,
    `None` disables clipping. `fused`: `None` = fused AdamW when the parameters live on CUDA, `True`/`False` force it.
    `decay`: the shape after warmup, `cosine` or `linear`; `hold_ratio`: the fraction of
    each stage held at the peak before it decays (RAE's DiT schedule: constant for 40 of 800
    epochs, then linear to a tenth of the peak: `decay=linear, hold_ratio=0.05,
    min_lr_ratio=0.1`). `lr_scale`: module name -> LR multiplier for the parameters under
    it (the longest matching name wins), e.g. LLaVA's `mm_projector_lr` as
    `{"model.multi_modal_projector": 0.1}`.
    """

    weight_decay: float = 0.01  # AdamW weight decay (not on ndim < 2 or no_weight_decay())
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    min_lr_ratio: float = 0.0  # the decay's floor as a fraction of the peak LR
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    fused: bool | None = None  # fused AdamW; None = when the parameters live on CUDA
    decay: str = "cosine"  # LR shape after warmup: cosine | linear
    hold_ratio: float = 0.0  # fraction of each stage held at the peak LR before it decays
    # module name -> LR multiplier of its parameters (longest match wins)
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.betas = tuple(self.betas)  # JSON gives a list
        if any(not v > 0 for v in self.lr_scale.values()):
            raise ValueError(f"lr_scale multipliers must be > 0, got {self.lr_scale}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None (no clipping), got {self.grad_clip}")
        if self.fused not in (None, True, False):
            raise ValueError(f"fused must be None, True or False, got {self.fused!r}")
        if self.decay not in DECAYS or not 0.0 <= self.hold_ratio < 1.0:
            raise ValueError(
                f"decay must be one of {DECAYS} and hold_ratio in [0, 1), got "
                f"{self.decay!r}, {self.hold_ratio}"
            )


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The parameter names ``model.no_weight_decay()`` declares (timm's hook; looked up through
    DDP's ``module`` and ``torch.compile``'s ``_orig_mod``), without wrapper prefixes."""
    from openvision3.train.checkpoint import clean_key

    inner = model
    while not hasattr(inner, "no_weight_decay"):
        nxt = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
        if not isinstance(nxt, nn.Module):
            return set()
        inner = nxt
    return {clean_key(n) for n in inner.no_weight_decay()}


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module.rstrip(".") + ".")


def _scale_of(name: str, lr_scale: dict[str, float]) -> float:
    hits = [k for k in lr_scale if _under(name, k)]
    return lr_scale[max(hits, key=len)] if hits else 1.0


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None
) -> list[dict]:
    """Split trainable parameters into ``[decay, no_decay]`` AdamW groups (no decay: ``ndim <
    2`` or named by ``model.no_weight_decay()``), then one more pair
    per LR multiplier of ``lr_scale`` (module name -> multiplier) that some parameter takes.

    The first two groups are always returned (possibly empty) so the optimizer state layout only
    depends on the model and ``lr_scale``. Frozen parameters (``requires_grad=False``) are left
    out; tied parameters appear once. Group dicts carry a ``"name"`` for logging and an
    ``"lr_scale"``.
    """
    from openvision3.train.checkpoint import clean_key

    lr_scale = lr_scale or {}
    names = [clean_key(n) for n, _ in model.named_parameters()]  # wrapper prefixes dropped
    unmatched = [k for k in lr_scale if not any(_under(n, k) for n in names)]
    if unmatched:
        raise ValueError(f"optim.lr_scale: no parameter under {unmatched}")
    exempt = no_weight_decay_names(model)
    groups: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and clean_key(name) not in exempt
        groups.setdefault((_scale_of(clean_key(name), lr_scale), decays), []).append(p)
    return [
        {
            "name": ("decay" if decays else "no_decay") + ("" if scale == 1.0 else f"@{scale:g}"),
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": scale,
        }
        for (scale, decays), params in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with learning rate ``lr`` (the peak LR, or 1.0 when a
    :func:`multi_stage_schedule` gives absolute learning rates) times each group's
    ``lr_scale``."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr_scale)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    fused = cfg.fused
    if fused is None:
        fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def lr_lambda(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    decay: str = "cosine",
    hold_steps: int = 0,
) -> float:
    """LR multiplier at optimizer step ``step`` (0-based), in ``[min_lr_ratio, 1]``.

    Linear warmup ``(step + 1) / warmup_steps`` (so step ``warmup_steps - 1`` reaches the peak),
    ``hold_steps`` at the peak, then a cosine (or a straight line, ``decay="linear"``) from 1 to
    ``min_lr_ratio`` at ``total_steps``; steps at or beyond ``total_steps`` stay at
    ``min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr_ratio
    start = min(warmup_steps + hold_steps, total_steps - 1)
    if step < start:
        return 1.0
    progress = (step - start) / (total_steps - start)
    if decay == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_schedule(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Warmup + cosine ``LambdaLR``: group lr = group's initial lr x :func:`lr_lambda`.

    Call ``scheduler.step()`` once after each ``optimizer.step()``; the LR used by optimizer step
    ``s`` is then ``peak * lr_lambda(s, ...)``.
    """
    _check_schedule(warmup_steps, total_steps, min_lr_ratio)

    def fn(step: int) -> float:
        return lr_lambda(step, warmup_steps, total_steps, min_lr_ratio)

    return LambdaLR(optimizer, fn)


def multi_stage_schedule(
    stages: list[tuple[int, float, int]],
    min_lr_ratio: float = 0.0,
    decay: str = "cosine",
    hold_ratio: float = 0.0,
) -> Callable[[int], float]:
    """Absolute LR as a function of the global step for consecutive stages.

    ``stages``: ``[(steps, peak_lr, warmup_steps), ...]``; stage ``i`` covers global steps
    ``[sum(steps[:i]), sum(steps[:i + 1]))`` and runs its own warmup from ~0 to ``peak_lr`` then
    a cosine to ``min_lr_ratio * peak_lr`` (e.g. 1000 epochs @128 px + 200 @256 px); ``decay``
    and ``hold_ratio`` as in ``OptimConfig``. Steps past the last stage stay at the last stage's
    minimum.
    """
    if not stages:
        raise ValueError("multi_stage_schedule needs at least one stage")
    for i, (steps, lr, warmup) in enumerate(stages):
        if not lr > 0:
            raise ValueError(f"stage {i}: peak_lr must be > 0, got {lr}")
        _check_schedule(warmup, steps, min_lr_ratio)
    stages = [(int(s), float(lr), int(w)) for s, lr, w in stages]

    def fn(step: int) -> float:
        start = 0
        for steps, lr, warmup in stages:
            if step < start + steps:
                hold = int(hold_ratio * steps)
                return lr * lr_lambda(step - start, warmup, steps, min_lr_ratio, decay, hold)
            start += steps
        return stages[-1][1] * min_lr_ratio

    return fn


def build_multi_stage_scheduler(
    optimizer: torch.optim.Optimizer,
    stages: list[tuple[int, float, int]],
    min_lr_ratio: float = 0.0,
    decay: str = "cosine",
    hold_ratio: float = 0.0,
) -> LambdaLR:
    """``LambdaLR`` whose group lr is exactly ``multi_stage_schedule(stages)(step)``.

    Sets every group's base (``initial_lr``) to its ``lr_scale`` (1.0 by default) first, so
    build it on a fresh optimizer; a scaled group's lr is the schedule's times its scale.
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group.get("lr_scale", 1.0)
    return LambdaLR(optimizer, multi_stage_schedule(stages, min_lr_ratio, decay, hold_ratio))
