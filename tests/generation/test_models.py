"""DiT-DH: parameter counts pinned against RAE's (meta device, 1000 classes), adaLN-Zero
output 0 at init, every trainable parameter gets a gradient, RoPE is a relative rotation."""

import pytest
import torch

from openvision3.generation.models import DiTDH, DiTDHConfig, Rope2d, count_parameters
from openvision3.generation.presets import MODEL_PRESETS, demo_dit


@pytest.mark.parametrize(
    "name, millions",
    [
        ("dit-dh-xl", 838.7),
        ("dit-dh-s", 196.5),
        ("dit-dh-b", 294.3),
        ("dit-dh-l", 621.7),
        ("dit-dh-xl-1024", 840.0),
        ("dit-dh-s-1024", 197.6),
        ("dit-xl", 677.2),
    ],
)
def test_parameter_counts(name, millions):
    with torch.device("meta"):
        model = DiTDH(MODEL_PRESETS[name]())
    assert round(count_parameters(model) / 1e6, 1) == millions


def tiny(**kw) -> DiTDHConfig:
    base = dict(in_channels=8, input_size=4, width=32, depth=2, heads=2, head_width=48,
                head_depth=1, head_heads=2, num_classes=5)  # fmt: skip
    return DiTDHConfig(**{**base, **kw})


@pytest.mark.parametrize("head_depth", [0, 1])
def test_adaln_zero_output_is_zero_at_init(head_depth):
    torch.manual_seed(0)
    model = DiTDH(tiny(head_depth=head_depth))
    v = model(torch.randn(3, 8, 4, 4), torch.rand(3), torch.tensor([0, 4, 5]))
    assert v.shape == (3, 8, 4, 4) and torch.equal(v, torch.zeros_like(v))


def test_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = DiTDH(tiny())
    for p in model.parameters():  # leave adaLN-Zero: with zero gates nothing upstream learns
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    v = model(torch.randn(2, 8, 4, 4), torch.rand(2), torch.tensor([1, 5]))
    v.square().mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    # The label row of class 0, 2, 3, 4 is unused by this batch; the table itself gets a gradient.
    assert not missing and torch.isfinite(v).all()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "t_embedder.W"}  # fixed sin-cos table, Fourier frequencies


def test_rope_depends_only_on_relative_position():
    rope = Rope2d(head_dim=8, side=4)
    q, k = torch.randn(8), torch.randn(8)
    x = torch.stack([q] * 16)[None, None]  # the same vector at every position
    y = torch.stack([k] * 16)[None, None]
    rq, rk = rope(x)[0, 0], rope(y)[0, 0]  # (N, d)
    dots = rq @ rk.T  # (N, N); position n = 4 * row + col
    torch.testing.assert_close(dots[0, 5], dots[10, 15])  # both (+1, +1) apart
    torch.testing.assert_close(dots[1, 2], dots[13, 14])  # both (0, +1) apart
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))


def test_demo_model_meets_the_width_rule():
    cfg = demo_dit()
    assert cfg.width >= cfg.in_channels and cfg.head_width >= cfg.in_channels
    assert 5e6 < count_parameters(DiTDH(cfg)) < 6e6
