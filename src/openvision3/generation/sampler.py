"""Sampling the flow ODE from noise (t = 1) to tokens, with guidance, as RAE's
``src/stage2/transport/integrators.py`` and ``DDT.py`` (``forward_with_cfg``,
``forward_with_autoguidance``).

The grid is RAE's shifted one (``flow.sample_grid``: 50 points = 49 steps by default, ending
at shift(0.001), not 0; the last state is the sample). Guidance mixes two velocities,

- CFG: v = v_null + w (v_cond - v_null), the null class as the unconditional model;
- AutoGuidance: v = v_weak + w (v_cond - v_weak), with a smaller or earlier model that is
  class-conditional too (RAE: DiT-DH-S early checkpoint, w = 1.42),

at the times the interval rule picks (t = 1 is noise); elsewhere the conditional velocity is
used as is. ``interval = (a, b)`` under

- ``"inside"`` (the default, for every model): guided where a <= t <= b, per sample, as
  ``DiTwDDTHead.forward_with_cfg`` / ``forward_with_autoguidance``;
- ``"lightningdit"``: guided *outside* [a, b) (upper edge exclusive), judged on the batch's
  first t, as ``LightningDiT.forward_with_cfg`` / ``forward_with_autoguidance`` with
  ``cfg_interval=[(a, b)]`` and ``interval_cfg`` <= 1 (conditional inside). RAE's sampling
  scripts pass that method a bare ``(t_min, t_max)`` pair, which it cannot index (a
  ``TypeError``), so they sample a LightningDiT unguided only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from openvision3.generation.flow import sample_grid

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t (B,)) -> v


@dataclass
class SamplerConfig:
    """``steps``: grid points (RAE: 50); ``method``: euler | heun; ``guidance``: cfg |
    autoguidance; ``scale``: w (1 = no guidance); ``interval``: (a, b) read by
    ``interval_rule``: inside (guided on [a, b]) | lightningdit (guided outside [a, b))."""

    steps: int = 50
    method: str = "euler"
    guidance: str = "cfg"
    scale: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    interval_rule: str = "inside"

    def __post_init__(self):
        self.interval = tuple(self.interval)
        if self.method not in ("euler", "heun"):
            raise ValueError(f"sampler method must be euler or heun, got {self.method!r}")
        if self.guidance not in ("cfg", "autoguidance"):
            raise ValueError(f"guidance must be cfg or autoguidance, got {self.guidance!r}")
        if self.interval_rule not in INTERVAL_RULES:
            raise ValueError(
                f"interval_rule must be inside or lightningdit, got {self.interval_rule!r}"
            )
        if self.steps < 2 or not self.interval[0] < self.interval[1]:
            raise ValueError("need steps >= 2 and interval (t_min, t_max) with t_min < t_max")


INTERVAL_RULES = ("inside", "lightningdit")


def guided_times(t: torch.Tensor, interval: tuple[float, float], rule: str = "inside"):
    """Which samples of times ``t`` (B,) get guidance -> (B,) bool, by ``rule`` (module doc)."""
    lo, hi = interval
    if rule == "inside":  # DiTwDDTHead: t_min <= t <= t_max, per sample
        return (t >= lo) & (t <= hi)
    if rule == "lightningdit":  # LightningDiT: not in [a, b), judged on t[0] for the batch
        return ~((t[:1] >= lo) & (t[:1] < hi)).expand_as(t)
    raise ValueError(f"unknown interval rule {rule!r}")


def _mix(v_cond, v_other, t, scale, interval, rule) -> torch.Tensor:
    guided = v_other + scale * (v_cond - v_other)
    mask = guided_times(t, interval, rule)
    return torch.where(mask.view(-1, *[1] * (v_cond.dim() - 1)), guided, v_cond)


def guided_velocity(
    model: nn.Module,
    labels: torch.Tensor,
    scale: float = 1.0,
    interval: tuple[float, float] = (0.0, 1.0),
    guide: nn.Module | None = None,
    rule: str = "inside",
) -> Velocity:
    """The velocity field of ``model`` for ``labels`` (B,) with CFG (``guide`` None; the null
    class is ``model.cfg.num_classes``) or AutoGuidance by ``guide``, at the times ``rule``
    picks from ``interval``; w = 1 without a guide is the conditional model alone (no second
    forward)."""

    def cfg_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return model(x, t, labels)
        null = torch.full_like(labels, model.cfg.num_classes)
        v_cond, v_null = model(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])
        ).chunk(2)
        return _mix(v_cond, v_null, t, scale, interval, rule)

    def ag_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _mix(model(x, t, labels), guide(x, t, labels), t, scale, interval, rule)

    return cfg_velocity if guide is None else ag_velocity


@torch.no_grad()
def integrate(velocity: Velocity, noise: torch.Tensor, grid: torch.Tensor, method: str = "euler"):
    """Integrate dx/dt = v(x, t) from ``noise`` (B, ...) at grid[0] along ``grid`` (decreasing
    times, float64) -> x at grid[-1]. Heun: the explicit trapezoid (two evaluations a step)."""
    x = noise
    b = x.shape[0]
    for i in range(len(grid) - 1):
        t0, t1 = float(grid[i]), float(grid[i + 1])
        tt = torch.full((b,), t0, device=x.device, dtype=torch.float32)
        v0 = velocity(x, tt)
        x_next = x + (t1 - t0) * v0
        if method == "heun":
            v1 = velocity(x_next, torch.full_like(tt, t1))
            x_next = x + (t1 - t0) * 0.5 * (v0 + v1)
        x = x_next
    return x


def sample_tokens(
    model: nn.Module,
    labels: torch.Tensor,
    noise: torch.Tensor,
    cfg: SamplerConfig,
    shift: float,
    guide: nn.Module | None = None,
) -> torch.Tensor:
    """Normalised token grids (B, C, H, W) for ``labels`` from ``noise`` (same shape)."""
    if cfg.guidance == "autoguidance" and guide is None and cfg.scale != 1.0:
        raise ValueError("AutoGuidance needs a guide model")
    guide = guide if cfg.guidance == "autoguidance" else None
    v = guided_velocity(model, labels, cfg.scale, cfg.interval, guide, cfg.interval_rule)
    return integrate(v, noise, sample_grid(cfg.steps, shift), cfg.method)
