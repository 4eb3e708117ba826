"""Apply parallelism and compilation to a model from the outside (torchtitan style).

Order, when several are on: compile per block -> wrap the whole model for data parallelism.
Today: DDP over all trainable parameters (frozen VAE parameters are ignored by DDP because
they do not require gradients). FSDP2 and activation checkpointing plug in here without
touching the model files: every transformer block is an ``nn.Module`` with a ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from openvision3.models.layers import Block


def blocks(model: nn.Module) -> list[nn.Module]:
    """Every transformer block of every tower (the unit for compile / checkpointing / sharding)."""
    return [m for m in model.modules() if isinstance(m, Block)]


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each block in place (shapes vary per stage; dynamic=False recompiles once)."""
    for block in blocks(model):
        block.compile()


def parallelize(
    model: nn.Module, world_size: int, device: torch.device, compile: bool = False
) -> nn.Module:
    """Returns the module to call in the training step (the model itself or its DDP wrapper).

    ``find_unused_parameters`` stays False: the trainer only builds heads whose loss weight is
    non-zero, so every trainable parameter receives a gradient each step.
    """
    if compile:
        compile_blocks(model)
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return model
