"""perf.py: FLOP counting (with SDPA's CPU kernels), timing, call capture and replay."""

import torch
import torch.nn.functional as F
from torch import nn

from openvision3 import perf


def test_cpu_attention_flops_are_counted():
    """torch registers no formula for SDPA's CPU kernels; perf adds the upstream ones."""
    b, k, n, d = 2, 4, 16, 8
    q = torch.randn(b, k, n, d, requires_grad=True)
    mask = torch.ones(1, 1, n, n, dtype=torch.bool)

    def fn():
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum().backward()

    _, flops = perf.count_flops(fn)
    bmm = 2 * b * k * n * n * d  # one (N x D) @ (D x N) per head
    assert flops == 2 * bmm + 5 * bmm  # forward: QK^T and PV; backward: 5 products


def test_benchmark_counts_calls():
    calls = []
    out, times, warm = perf.benchmark(lambda: calls.append(1) or len(calls), 3, 2, "cpu")
    assert out == 5 and len(times) == 3 and len(warm) == 2 and all(t >= 0 for t in times)
    assert perf.median([3.0, 1.0, 2.0]) == 2.0 and perf.median([1.0, 2.0]) == 1.5


def test_capture_and_replay():
    torch.manual_seed(0)
    first, second = nn.Linear(4, 8), nn.Linear(8, 2)
    x = torch.randn(3, 4)

    def forward():
        return second(first(x)).sum()

    calls = perf.capture_calls(forward, {"first": first, "second": second})
    assert [len(calls["first"]), len(calls["second"])] == [1, 1]
    assert not torch.nn.modules.module._has_any_global_hook()  # the hook is really gone
    ran_backward, flops = perf.count_flops(perf.replay(calls["second"], model=second))
    assert ran_backward and second.weight.grad is not None
    # forward 2*3*8*2, backward: grad of the input (its producer needed one) and of the weight
    assert flops == 3 * (2 * 3 * 8 * 2)
    ran_backward, flops = perf.count_flops(perf.replay(calls["first"]))
    assert ran_backward and flops == 2 * (2 * 3 * 4 * 8)  # x needs no gradient


def test_matmul_ceiling_is_positive():
    assert perf.matmul_ceiling("cpu", torch.float32, n=128, steps=2) > 0
