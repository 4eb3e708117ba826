"""Generic pieces of gradient accumulation and of the step's bookkeeping, for every task.

- ``split_batch``: a batch dict -> k micro-batch dicts;
- ``no_grad_sync``: skip the data-parallel gradient sync (DDP ``no_sync``, FSDP2
  ``set_requires_gradient_sync``) on all micro-batches but the last;
- ``micro_seeds`` / ``random_stream``: one random stream per micro-batch, seeded from the
  global generator, so a task can replay a micro-batch's randomness (resume stays exact);
- ``StepTerms``: the step's loss terms summed on the device between log intervals.

A task's ``forward_backward`` composes them (``ov3/accumulate.py`` adds OpenVision 3's
contrastive cache, which keeps the negatives of the whole batch).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def split_batch(batch: dict, k: int) -> list[dict]:
    """Batch dict of B samples -> k micro-batch dicts of B / k (tensors and lists sliced)."""
    n = next(len(v) for v in batch.values() if torch.is_tensor(v) or isinstance(v, list))
    if n % k:
        raise ValueError(f"a rank's batch of {n} is not divisible by train.accum_steps={k}")
    m = n // k
    sliceable = lambda v: torch.is_tensor(v) or isinstance(v, list)  # noqa: E731
    return [
        {key: v[j * m : (j + 1) * m] if sliceable(v) else v for key, v in batch.items()}
        for j in range(k)
    ]


@contextlib.contextmanager
def no_grad_sync(model: nn.Module):
    """Skip the gradient all-reduce of data parallelism inside (DDP or FSDP2); else nothing."""
    if hasattr(model, "no_sync"):  # DistributedDataParallel
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def micro_seeds(k: int) -> list[int]:
    """k seeds from the global CPU generator (advances it; a host-side draw)."""
    return torch.randint(2**62, (k,)).tolist()


@contextlib.contextmanager
def random_stream(seed: int, device: torch.device):
    """Run inside a fresh RNG stream (CPU and this CUDA device); the global state is kept."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device only
        yield


class StepTerms:
    """Terms summed on the device over a log interval, and the first non-finite loss.

    ``add`` never synchronises with the host; ``mean`` and ``non_finite`` do (once each),
    and the trainer calls them only at log / checkpoint / eval steps.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bad_step: torch.Tensor | None = None  # -1, or the first step with a bad loss
        self.bad_terms: dict[str, torch.Tensor] = {}

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        """Record one step's terms (detached () tensors; ``terms["loss"]`` is checked)."""
        terms = {k: v.detach().float() for k, v in terms.items()}
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        loss = terms["loss"]
        if self.bad_step is None:
            self.bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        first = (~torch.isfinite(loss)) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        for k, v in terms.items():
            self.bad_terms[k] = torch.where(first, v, self.bad_terms.get(k, v))

    def non_finite(self) -> str | None:
        """None, or "non-finite loss at step S: {terms}" for the first such step seen."""
        if self.bad_step is None or int(self.bad_step) < 0:
            return None
        detail = dict(zip(self.bad_terms, torch.stack(list(self.bad_terms.values())).tolist()))
        return f"non-finite loss at step {int(self.bad_step)}: {detail}"

    def mean(self) -> dict[str, float]:
        """The interval's mean of every term (one host sync); then starts a new interval."""
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).div(self.count).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, values))
