import pytest
import torch
from torch import nn

from openvision3.train.ema import EMA


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.register_buffer("count", torch.zeros(2))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def _run(ema, model, values):
    for v in values:
        with torch.no_grad():
            model.lin.weight.copy_(v)
        ema.update(model)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_closed_form(warmup):
    model = Toy()
    decay, k = 0.5, 20
    s0 = model.lin.weight.detach().double().clone()
    ema = EMA(model, decay=decay, warmup=warmup)
    values = [torch.randn(2, 3) for _ in range(k)]
    _run(ema, model, values)
    # s_k = prod(d_i) s_0 + sum_i (1 - d_i) prod_{j > i} d_j p_i,  d_i = min(decay, (1+i)/(10+i))
    d = [min(decay, (1 + i) / (10 + i)) if warmup else decay for i in range(k)]
    expected = s0 * torch.tensor(d, dtype=torch.float64).prod()
    for i, v in enumerate(values):
        expected += (1 - d[i]) * torch.tensor(d[i + 1 :], dtype=torch.float64).prod() * v.double()
    assert ema.num_updates == k
    torch.testing.assert_close(ema.params["lin.weight"].double(), expected, rtol=0, atol=1e-6)
    assert d[0] == (0.1 if warmup else 0.5)


def test_ema_tracks_trainable_fp32_and_copies_buffers():
    model = Toy().to(torch.bfloat16)
    ema = EMA(model)
    assert set(ema.params) == {"lin.weight", "lin.bias"}  # frozen parameters not tracked
    assert set(ema.buffers) == {"count"}  # persistent buffers only
    assert all(t.dtype == torch.float32 for t in ema.params.values())
    model.count.fill_(7)
    ema.update(model)
    assert torch.equal(ema.buffers["count"], torch.full((2,), 7.0, dtype=torch.bfloat16))


def test_copy_to_and_swapped_restore():
    model = Toy()
    ema = EMA(model, decay=0.9, warmup=False)
    _run(ema, model, [torch.ones(2, 3)] * 3)
    live = model.lin.weight.detach().clone()
    shadow = ema.params["lin.weight"].clone()
    assert not torch.equal(live, shadow)
    with ema.swapped(model) as m:
        assert m is model and torch.equal(model.lin.weight, shadow)
    assert torch.equal(model.lin.weight, live)
    ema.copy_to(model)
    assert torch.equal(model.lin.weight, shadow)


def test_wrapped_models_share_names():
    model = Toy()
    ema = EMA(nn.DataParallel(model))  # names without the "module." prefix
    assert set(ema.params) == {"lin.weight", "lin.bias"}
    ema.update(torch.compile(model))  # "_orig_mod." wrapper: same names
    ema.copy_to(nn.DataParallel(model))
    assert ema.num_updates == 1


def test_state_dict_round_trip():
    model = Toy()
    ema = EMA(model, decay=0.99)
    _run(ema, model, [torch.randn(2, 3) for _ in range(4)])
    other = EMA(Toy(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 4
    for k in ema.params:
        assert torch.equal(other.params[k], ema.params[k])
    assert other.current_decay() == ema.current_decay() == min(0.99, 5 / 14)
    bad = ema.state_dict()
    bad["params"] = {"lin.weight": bad["params"]["lin.weight"]}
    with pytest.raises(KeyError):
        other.load_state_dict(bad)
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)
