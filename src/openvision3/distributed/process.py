"""Process-group set-up for single-process runs and ``torchrun`` (single- or multi-node).

The only place that reads the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK). Multi-node
runs start one ``torchrun`` per node with a c10d rendezvous (``scripts/slurm_train.sh`` does it
under SLURM); the global rank and world size come from the process group, the device from the
node-local rank. See docs/scaling.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


def init_process(device: str = "auto") -> ProcessInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1).

    NCCL on CUDA, gloo on CPU. Returns this process's rank, world size and device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return ProcessInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of ranks; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0 (the one that writes files and logs)."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of scalars over ranks (one collective for all of them)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def gather_object(obj):
    """Every rank's ``obj`` (JSON-able), in rank order; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` (JSON-able) on every rank; ``obj`` itself without a process group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
