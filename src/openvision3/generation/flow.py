"""Flow matching on normalised tokens, as RAE trains its DiT (``src/stage2/transport/``).

Linear path between data x (t = 0) and noise eps (t = 1):

    x_t = (1 - t) x + t eps,      target velocity u = eps - x,      loss mean((v - u)^2)

Training times: a logit-normal(0, 1) drawn on [0, 1 - 1/1000] by its inverse CDF, then shifted
toward noise by ``shift(t) = s t / (1 + (s - 1) t)`` with ``s = sqrt(C H W / 4096)`` (RAE's
``time_dist_shift_dim / time_dist_shift_base``; s = sqrt(48) for 16x16x768 tokens). The sampler
runs on the same shifted grid (``sample_grid``).
"""

from __future__ import annotations

import math

import torch

SHIFT_BASE = 4096
T_MAX = 1.0 - 1.0 / 1000  # the truncated time range [0, T_MAX] of RAE's training times
T_END = 0.001  # the sampler stops at shift(T_END), never at 0


def shift_factor(shape: tuple[int, ...] | int, base: int = SHIFT_BASE) -> float:
    """s = sqrt(m / base) for data of ``shape`` (C, H, W) or of m elements; s >= 1."""
    m = shape if isinstance(shape, int) else math.prod(shape)
    s = math.sqrt(m / base)
    if s < 1:
        raise ValueError(f"time shift {s:.3f} < 1 for {m} elements: RAE's shift assumes s >= 1")
    return s


def shift_time(t: torch.Tensor, s: float) -> torch.Tensor:
    """t -> s t / (1 + (s - 1) t): monotone, fixes 0 and 1, moves times toward noise (t = 1)."""
    return s * t / (1 + (s - 1) * t)


def logit_normal_times(u: torch.Tensor, s: float) -> torch.Tensor:
    """Uniforms u in [0, 1) -> training times: the inverse CDF of logit-normal(0, 1) truncated
    to [0, T_MAX], then shifted by ``s``; float32, the shape of u."""
    hi = 0.5 * (1 + math.erf(math.log(T_MAX / (1 - T_MAX)) / math.sqrt(2)))  # CDF at T_MAX
    z = math.sqrt(2) * torch.erfinv(2 * hi * u.double() - 1)  # normal quantile of hi * u
    t = torch.sigmoid(z).clamp(0.0, T_MAX)
    return shift_time(t, s).float()


def sample_times(n: int, s: float, generator: torch.Generator | None = None, device=None):
    """(n,) training times (``logit_normal_times`` of n uniforms)."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return logit_normal_times(u, s)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t eps for (B, ...) tensors and times (B,)."""
    t = t.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return (1 - t) * x + t * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """u = eps - x, the time derivative of the path."""
    return noise - x


def flow_loss(velocity: torch.Tensor, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE (B,) of the predicted velocity against eps - x (fp32), unweighted."""
    err = (velocity.float() - velocity_target(x, noise).float()) ** 2
    return err.flatten(1).mean(dim=1)


def sample_grid(num_points: int, s: float) -> torch.Tensor:
    """(num_points,) sampling times ``shift(1 - linspace(0, 1 - T_END, num_points))``: from 1
    (noise) to shift(T_END), float64; ``num_points - 1`` integration steps."""
    if num_points < 2:
        raise ValueError(f"a sampling grid needs >= 2 points, got {num_points}")
    u = 1 - torch.linspace(0, 1 - T_END, num_points, dtype=torch.float64)
    return shift_time(u, s)
