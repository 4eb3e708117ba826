"""Cross-rank plumbing shared by the evaluators.

Every evaluator keeps masked *sums and counts* and all-reduces them before dividing, so padded
rows and uneven shards (evaluation loaders give each rank a disjoint share, without padding)
never bias a metric: the mean over 2 ranks holding 4 and 3 images is the mean over the 7.
Everything here is a no-op without an initialised ``torch.distributed`` process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from openvision3.distributed.process import get_world_size, is_distributed, is_main


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a new tensor on ``tensor``'s device); a copy on one rank."""
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows, in rank order, on every rank.

    Ranks may hold different numbers of rows: the shapes are gathered first, every shard is
    padded to the largest, gathered, and trimmed back. A rank with no rows may pass any
    (0, ...) tensor of the right number of dimensions (its trailing sizes are taken from the
    other ranks).

    Args:
        tensor: (n_rank, ...) this rank's rows; the dtype and trailing shape must agree.

    Returns:
        (sum of n_rank, ...) on ``tensor``'s device.
    """
    if not is_distributed():
        return tensor
    device, world = _comm_device(), get_world_size()
    local = tensor.detach().to(device)
    shape = torch.tensor(local.shape, device=device, dtype=torch.long)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes).cpu()  # (world, ndim)
    sizes = shapes[:, 0].tolist()
    nonempty = shapes[shapes[:, 0] > 0, 1:]
    if len(nonempty) and (nonempty != nonempty[0]).any():
        raise ValueError(f"ranks disagree on the trailing shape: {shapes.tolist()}")
    padded = local.new_zeros(shapes.amax(dim=0).tolist())
    if local.shape[0]:
        padded[: local.shape[0]] = local
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    return torch.cat([s[:n] for s, n in zip(shards, sizes)]).to(tensor.device)


def gather_objects_to_rank0(obj: object) -> list | None:
    """Every rank's ``obj`` as a rank-ordered list on rank 0 (``None`` elsewhere); ``[obj]``
    without a process group. For small report payloads (CSV rows, a few images) only."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


class MetricAccumulator:
    """Named (sum, count) pairs in float64, reduced across ranks by one packed all-reduce.

    The names are fixed at construction so every rank packs the same tensor, including a
    rank that saw no batch at all.

    >>> acc = MetricAccumulator("psnr")
    >>> acc.add("psnr", torch.tensor([30.0, 40.0]))
    >>> acc.all_reduce(); acc.compute()
    {'psnr': 35.0}
    """

    def __init__(self, *names: str):
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need distinct metric names, got {names}")
        self.names = tuple(names)
        self._sums = {n: torch.zeros((), dtype=torch.float64) for n in names}
        self._counts = {n: torch.zeros((), dtype=torch.float64) for n in names}
        self._reduced = False

    def add(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Accumulate ``values`` (B,) where ``mask`` (B,) is true (all rows when None)."""
        if name not in self._sums:
            raise KeyError(f"unknown metric {name!r}; declared: {self.names}")
        if self._reduced:
            raise RuntimeError("add() after all_reduce(): make a new accumulator")
        values = values.detach().reshape(-1).to("cpu", torch.float64)
        if mask is None:
            mask = torch.ones_like(values)
        mask = mask.detach().reshape(-1).to("cpu", torch.float64)
        if mask.shape != values.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match values {tuple(values.shape)}")
        # where(), not a product: a masked-out NaN/inf row must not poison the sum.
        self._sums[name] += torch.where(mask > 0, values, 0.0).sum()
        self._counts[name] += mask.sum()

    def all_reduce(self) -> None:
        """Sum every (sum, count) over ranks in one collective; call once, on every rank."""
        if self._reduced:
            raise RuntimeError("all_reduce() called twice: it would count every rank again")
        packed = torch.stack(
            [self._sums[n] for n in self.names] + [self._counts[n] for n in self.names]
        )
        packed = all_reduce_sum(packed)
        k = len(self.names)
        for i, n in enumerate(self.names):
            self._sums[n], self._counts[n] = packed[i], packed[k + i]
        self._reduced = True

    def count(self, name: str) -> int:
        """Number of (unmasked) values accumulated under ``name``."""
        return int(self._counts[name].item())

    def compute(self) -> dict[str, float]:
        """Means ``{name: sum / count}``; NaN for a name that received no value."""
        return {
            n: (self._sums[n] / self._counts[n]).item() if self._counts[n] > 0 else float("nan")
            for n in self.names
        }


def limited(loader: Iterable[dict], num_images: int, rank: int, world: int) -> Iterator[dict]:
    """This rank's share of the first ``num_images`` images (0 = all), batch by batch.

    ``loader`` is this rank's evaluation loader, which holds the images r, r + world, ... of
    the split (``data.loader.build_loader(..., train=False)``), so the shares of all ranks make
    up exactly the first ``num_images`` images whatever the number of ranks."""
    share = None if num_images <= 0 else num_images // world + int(rank < num_images % world)
    seen = 0
    for batch in loader:
        if share is not None and seen >= share:
            return
        b = len(batch["key"])
        take = b if share is None else min(b, share - seen)
        seen += take
        yield {k: v[:take] for k, v in batch.items()} if take < b else batch


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free module)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and ``torch.no_grad()`` inside; the training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
