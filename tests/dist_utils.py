"""Helpers shared by the 2-process gloo tests (importable from spawned workers)."""

import os
import socket

import torch


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(rank: int, world: int, port: int) -> None:
    """In a spawned worker: the torchrun environment of ``rank`` of ``world`` on localhost,
    and one thread per process (two workers share the two cores)."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
