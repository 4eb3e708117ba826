"""Timing, FLOP counting and the matmul ceiling, shared by the benchmarks (``ov3 bench``).

- :func:`benchmark` syncs the device after every call, so each call's time is its own; report
  the median (robust to a stray slow call) unless a throughput over many calls is wanted.
- :func:`count_flops` uses ``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions
  and attention are counted (forward and backward, 2 FLOPs per multiply-add); elementwise ops,
  norms and softmax count zero. Causal or masked attention is counted as full attention.
- :func:`capture_calls` records the calls of chosen modules during one run, and :func:`replay`
  reruns them alone, so each part of a step can be timed and counted on its real inputs.
- :func:`matmul_ceiling` is the denominator of MFU: the best FLOP/s of a large square matmul
  in the training dtype, measured in the same process as the numbers it divides.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._pytree import tree_leaves, tree_map_only

T = TypeVar("T")


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def benchmark(
    fn: Callable[[], T], steps: int, warmup: int, device: torch.device | str
) -> tuple[T, list[float], list[float]]:
    """Call ``fn`` ``warmup`` times, then ``steps`` times, syncing the device after each call.

    Returns (last output, seconds of each timed call, seconds of each warm-up call); the first
    warm-up call holds the one-off costs (``torch.compile``, cuDNN autotuning, lazy set-up).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    sync(device)
    out, warm, times = None, [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = fn()
        sync(device)
        (warm if i < warmup else times).append(time.perf_counter() - start)
    return out, times, warm


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _cpu_attention(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _cpu_attention_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


def _extra_formulas() -> dict:
    """FLOP formulas torch does not register: SDPA's CPU kernels (the CUDA flash, efficient
    and cuDNN kernels are registered upstream; the math fallback decomposes into bmm)."""
    aten = torch.ops.aten
    extra = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward),
    ):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            extra[op] = formula
    return extra


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` once (eagerly: compiled code hides its ops) -> (output, FLOPs it executed)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as fc:
        out = fn()
    return out, int(fc.get_total_flops())


def matmul_ceiling(
    device: torch.device | str, dtype: torch.dtype, n: int | None = None, steps: int = 10
) -> float:
    """Best FLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (n: 8192 on CUDA, 1024 on CPU)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    _, times, _ = benchmark(lambda: a @ b, steps=steps, warmup=3, device=device)
    return 2 * n**3 / min(times)


@dataclass
class _Leaf:
    tensor: torch.Tensor
    requires_grad: bool


def _freeze(tree):
    return tree_map_only(torch.Tensor, lambda t: _Leaf(t.detach(), t.requires_grad), tree)


def _thaw(tree):
    return tree_map_only(_Leaf, lambda x: x.tensor.detach().requires_grad_(x.requires_grad), tree)


def capture_calls(
    fn: Callable[[], object],
    modules: dict[str, nn.Module],
    match: Callable[[nn.Module], str | None] | None = None,
) -> dict[str, list[tuple]]:
    """Run ``fn`` once and record every call of the named ``modules`` (and of any module that
    ``match`` names, e.g. one built lazily inside ``fn``).

    Returns name -> [(module, args, kwargs)], tensors detached but remembering whether they
    required a gradient (run ``fn`` with gradients on for that to mean something).
    """
    names = {id(m): name for name, m in modules.items()}
    calls: dict[str, list[tuple]] = defaultdict(list)

    def hook(module, args, kwargs, output):
        name = names.get(id(module)) or (match(module) if match else None)
        if name is not None:
            calls[name].append((module, _freeze(args), _freeze(kwargs)))

    handle = nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
        # torch's handle forgets the with_kwargs flag; left behind, it sends every later module
        # call down the slow hook path (and makes torch.compile warn about global hooks).
        getattr(nn.modules.module, "_global_forward_hooks_with_kwargs", {}).pop(handle.id, None)
    return dict(calls)


def replay(
    calls: list[tuple], autocast: Callable = contextlib.nullcontext, model: nn.Module | None = None
) -> Callable[[], bool]:
    """A function rerunning captured ``calls``: forward under ``autocast``, then backward with
    unit output gradients when an output needs one (to the inputs that needed one and to the
    parameters; ``model``'s gradients are reset first, as a training step does).
    It returns True when it ran a backward."""

    def run() -> bool:
        if model is not None:
            model.zero_grad(set_to_none=True)
        outs = []
        with autocast():
            for module, args, kwargs in calls:
                out = module(*_thaw(args), **_thaw(kwargs))
                outs += [t for t in tree_leaves(out) if torch.is_tensor(t) and t.requires_grad]
        if outs:
            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
        return bool(outs)

    return run
