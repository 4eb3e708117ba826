"""Flow matching and sampling: the shift formula and grid endpoints, path and target, Euler
exact on a straight-line field, the CFG interval (DiTwDDTHead's and LightningDiT's rules),
AutoGuidance with the same model."""

import math

import pytest
import torch

from openvision3.generation import flow
from openvision3.generation.sampler import (
    SamplerConfig,
    guided_times,
    guided_velocity,
    integrate,
    sample_tokens,
)


def test_shift_factor_and_monotone_shift():
    assert flow.shift_factor((768, 16, 16)) == pytest.approx(math.sqrt(48))
    assert flow.shift_factor((1024, 16, 16)) == pytest.approx(8.0)
    assert flow.shift_factor((192, 8, 8)) == pytest.approx(math.sqrt(3))
    with pytest.raises(ValueError):
        flow.shift_factor((4, 8, 8))
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = flow.shift_time(t, math.sqrt(48))
    assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all() and (s[1:-1] > t[1:-1]).all()


def test_grid_endpoints():
    s = math.sqrt(48)
    g = flow.sample_grid(50, s)
    assert len(g) == 50 and g[0] == 1.0 and (g.diff() < 0).all()
    assert float(g[-1]) == pytest.approx(s * 0.001 / (1 + (s - 1) * 0.001))
    assert float(g[-1]) == pytest.approx(0.00689, abs=1e-5)


def test_training_times_are_shifted_logit_normal():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = flow.logit_normal_times(u, 1.0)
    z = torch.logit(t.double())
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01 and t.max() <= flow.T_MAX
    s = 3.0
    torch.testing.assert_close(
        flow.logit_normal_times(u, s), flow.shift_time(t.double(), s).float()
    )


def test_path_and_target():
    x, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = flow.interpolate(x, eps, t)
    torch.testing.assert_close(xt[0], x[0])
    torch.testing.assert_close(xt[3], eps[3])
    torch.testing.assert_close(xt[1], 0.75 * x[1] + 0.25 * eps[1])
    torch.testing.assert_close(flow.velocity_target(x, eps), eps - x)
    # The target is the path's time derivative.
    h = 1e-3
    dt = (flow.interpolate(x, eps, t + h) - flow.interpolate(x, eps, t)) / h
    torch.testing.assert_close(dt, eps - x, rtol=1e-3, atol=1e-3)
    assert flow.flow_loss(eps - x, x, eps).abs().max() == 0


def test_euler_is_exact_on_a_straight_line_field():
    x0 = torch.randn(3, 4)  # the data point every trajectory flows to

    def v(x, t):  # the exact velocity of the path towards x0: (x_t - x0) / t
        return (x - x0) / t[:, None]

    eps = torch.randn(3, 4)
    grid = flow.sample_grid(11, math.sqrt(3))
    for method in ("euler", "heun"):
        out = integrate(v, eps, grid, method)
        end = float(grid[-1])
        torch.testing.assert_close(out, x0 + end * (eps - x0), rtol=1e-5, atol=1e-5)


class Affine(torch.nn.Module):
    """A class-conditional velocity v = a x + b[y] t, whose outputs are easy to predict."""

    def __init__(self, num_classes=3, shift=0.0):
        super().__init__()
        self.cfg = type("C", (), {"num_classes": num_classes})
        self.b = torch.nn.Parameter(torch.arange(num_classes + 1.0) + shift)
        self.calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return 0.5 * x + (self.b[y] * t)[:, None]


def test_cfg_interval_and_scale_one():
    model = Affine()
    y = torch.tensor([0, 1, 2])
    x = torch.randn(3, 2)
    cond = model(x, torch.full((3,), 0.5), y)
    null = model(x, torch.full((3,), 0.5), torch.full_like(y, 3))
    t = torch.full((3,), 0.5)
    torch.testing.assert_close(guided_velocity(model, y, 1.0)(x, t), cond)  # w = 1
    v = guided_velocity(model, y, 4.0, (0.3, 0.7))
    torch.testing.assert_close(v(x, t), null + 4.0 * (cond - null))  # inside
    for outside in (0.1, 0.9):
        tt = torch.full((3,), outside)
        torch.testing.assert_close(v(x, tt), model(x, tt, y))  # no guidance outside
    mixed = torch.tensor([0.1, 0.5, 0.9])  # per sample
    out = v(x, mixed)
    torch.testing.assert_close(out[0], model(x, mixed, y)[0])
    torch.testing.assert_close(out[1], (null + 4.0 * (cond - null))[1])


def test_autoguidance_with_the_same_model_is_the_model():
    model, weak = Affine(), Affine(shift=1.0)
    y, x, t = torch.tensor([0, 2]), torch.randn(2, 2), torch.full((2,), 0.5)
    torch.testing.assert_close(guided_velocity(model, y, 1.42, guide=model)(x, t), model(x, t, y))
    v = guided_velocity(model, y, 2.0, guide=weak)(x, t)
    torch.testing.assert_close(v, weak(x, t, y) + 2.0 * (model(x, t, y) - weak(x, t, y)))
    noise = torch.randn(2, 2)
    cfg = SamplerConfig(steps=5, guidance="autoguidance", scale=1.42)
    a = sample_tokens(model, y, noise, cfg, 1.0, guide=model)
    b = sample_tokens(model, y, noise, SamplerConfig(steps=5), 1.0)
    torch.testing.assert_close(a, b)


def lightningdit_guides(t0: float, intervals) -> bool:
    """LightningDiT.forward_with_cfg, written out: the batch's first t picks; a listed [a, b)
    (upper edge exclusive) holding it gets the conditional velocity, any other t guidance."""
    return not any(a <= t0 < b for a, b in intervals)


@pytest.mark.parametrize("t0", [0.0, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_interval_rules_pick_the_guided_times(t0):
    t = torch.full((3,), t0)
    inside = guided_times(t, (0.3, 0.7), "inside")  # DiTwDDTHead: t_min <= t <= t_max
    assert inside.tolist() == [0.3 <= t0 <= 0.7] * 3
    lightning = guided_times(t, (0.3, 0.7), "lightningdit")
    assert lightning.tolist() == [lightningdit_guides(t0, [(0.3, 0.7)])] * 3
    # Through the velocity: guided or the conditional model as is.
    model, y, x = Affine(), torch.tensor([0, 1, 2]), torch.randn(3, 2)
    cond, null = model(x, t, y), model(x, t, torch.full_like(y, 3))
    v = guided_velocity(model, y, 4.0, (0.3, 0.7), rule="lightningdit")(x, t)
    want = null + 4.0 * (cond - null) if lightningdit_guides(t0, [(0.3, 0.7)]) else cond
    torch.testing.assert_close(v, want)


def test_lightningdit_rule_judges_the_batch_by_its_first_time():
    t = torch.tensor([0.5, 0.9, 0.1])  # t[0] inside [0.3, 0.7): no sample guided
    assert guided_times(t, (0.3, 0.7), "lightningdit").tolist() == [False] * 3
    assert guided_times(t, (0.3, 0.7), "inside").tolist() == [True, False, False]


def test_sampler_applies_the_lightningdit_rule():
    """interval [0, 1) under LightningDiT's rule: only the first step (t = 1) is guided."""
    model, y, noise = Affine(), torch.tensor([0, 2]), torch.randn(2, 2)
    scfg = SamplerConfig(steps=4, scale=3.0, interval=(0.0, 1.0), interval_rule="lightningdit")
    out = sample_tokens(model, y, noise, scfg, 1.0)
    grid, x = flow.sample_grid(4, 1.0), noise
    for i in range(3):
        t = torch.full((2,), float(grid[i]))
        cond, null = model(x, t, y), model(x, t, torch.full_like(y, 3))
        v = null + 3.0 * (cond - null) if i == 0 else cond
        x = x + float(grid[i + 1] - grid[i]) * v
    torch.testing.assert_close(out, x)
    inside = sample_tokens(model, y, noise, SamplerConfig(steps=4, scale=3.0), 1.0)
    assert (inside - out).abs().max() > 1e-3  # the default rule guides every step
    with pytest.raises(ValueError, match="interval_rule"):
        SamplerConfig(interval_rule="outside")
