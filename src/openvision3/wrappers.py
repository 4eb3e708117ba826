"""Seeing through the wrappers that training puts around modules.

``torch.compile`` (``_orig_mod``), activation checkpointing (``_checkpoint_wrapped_module``) and
DDP / DataParallel (``module``). Here, not in ``distributed/``, so that inference can unwrap a
model without importing ``torch.distributed``.
"""

from __future__ import annotations

from torch import nn

WRAPPER_ATTRS = ("_orig_mod", "_checkpoint_wrapped_module")  # torch.compile, AC wrapper


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` / DDP / DataParallel wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
