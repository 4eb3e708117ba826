"""Exponential moving average of a model's trainable parameters, kept in fp32.

``shadow <- d * shadow + (1 - d) * param`` after each optimizer step, with
``d = min(decay, (1 + n) / (10 + n))`` for the ``n``-th update (0-based) when ``warmup`` is on,
so early averages are not dominated by the random initialisation. Persistent buffers (e.g.
running statistics) are copied, not averaged. Names are the unwrapped model's without wrapper
parts (``checkpoint.clean_key``), so the EMA works the same on a compiled, activation-checkpointed
or DDP-wrapped model.

Under FSDP2 the shadows are ``DTensor``s with the layout of the parameters they follow: each rank
averages only its shards, and checkpoints save and reshard them like the parameters
(``train/checkpoint/dcp.py``). :meth:`copy_to` an unsharded model gathers them (a collective:
every rank calls it, as ``Trainer.eval_weights`` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from openvision3.train.checkpoint import clean_key
from openvision3.wrappers import unwrap_model


class EMA:
    """fp32 shadow copies of ``model``'s trainable parameters (and copies of its buffers)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        params, buffers = self._tensors(model)
        self.params = {k: p.detach().float().clone() for k, p in params.items()}
        self.buffers = {k: b.detach().clone() for k, b in buffers.items()}

    @staticmethod
    def _tensors(
        model: nn.Module, names=None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Parameters (the trainable ones, or those named in ``names``: a module frozen for
        one stage keeps its shadow) and persistent buffers of the unwrapped model, by name."""
        m = unwrap_model(model)
        persistent = set(m.state_dict(keep_vars=True))
        params = {
            clean_key(k): p
            for k, p in m.named_parameters()
            if (clean_key(k) in names if names is not None else p.requires_grad)
        }
        buffers = {clean_key(k): b for k, b in m.named_buffers() if k in persistent}
        return params, buffers

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current parameters into the shadows; copy its buffers."""
        params, buffers = self._tensors(model, self.params)
        if params.keys() != self.params.keys():
            raise KeyError("the model's trainable parameters differ from the EMA's")
        d = self.current_decay()
        names = list(self.params)
        torch._foreach_lerp_(
            [self.params[k] for k in names], [params[k].detach().float() for k in names], 1.0 - d
        )
        for k, b in self.buffers.items():
            b.copy_(buffers[k])
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights (cast to each parameter's dtype) and buffers into ``model``;
        sharded shadows into an unsharded model are gathered first (collective)."""
        params, buffers = self._tensors(model, self.params)
        for k, shadow in self.params.items():
            if isinstance(shadow, DTensor) and not isinstance(params[k], DTensor):
                shadow = shadow.full_tensor()
            params[k].copy_(shadow)
        for k, b in self.buffers.items():
            buffers[k].copy_(b)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into ``model`` (e.g. to evaluate); restored on exit.

        >>> with ema.swapped(model):
        ...     evaluate(model)
        """
        params, buffers = self._tensors(model, self.params)
        backup = {k: t.detach().clone() for k, t in {**params, **buffers}.items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, t in {**params, **buffers}.items():
                    t.copy_(backup[k])

    def state_dict(self) -> dict:
        """``{"num_updates": int, "decay": float, "params": {name: fp32}, "buffers": {name: t}}``."""
        return {
            "num_updates": self.num_updates,
            "decay": self.decay,
            "params": dict(self.params),
            "buffers": dict(self.buffers),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy saved shadows into this EMA's (keeping their device); ``decay`` stays as
        configured. With ``strict`` the saved names must match exactly."""
        for kind in ("params", "buffers"):
            mine, saved = getattr(self, kind), state[kind]
            if strict and mine.keys() != saved.keys():
                missing, extra = mine.keys() - saved.keys(), saved.keys() - mine.keys()
                raise KeyError(
                    f"EMA {kind} mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}"
                )
            for k in mine.keys() & saved.keys():
                mine[k].copy_(saved[k])
        self.num_updates = int(state["num_updates"])
