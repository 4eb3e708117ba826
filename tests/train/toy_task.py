"""A second task on the training engine: a residual MLP regressing random pairs with MSE.

It proves the seam (``train/task.py``) is the only thing a model needs: the engine trains,
checkpoints, resumes, freezes, parallelises (DDP / FSDP2 over the declared ``ToyBlock``) and
exports it without knowing what it is; ``register_task`` makes its checkpoints exportable.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from openvision3.dataclass_io import to_dict
from openvision3.train.accumulate import no_grad_sync, split_batch
from openvision3.train.checkpoint import model_state_dict
from openvision3.train.task import RunConfig, Task, register_task


@register_task
@dataclass
class ToyConfig(RunConfig):
    TASK: ClassVar[str] = "toy-regression"

    in_dim: int = 8
    width: int = 16
    depth: int = 2
    out_dim: int = 4
    dropout: float = 0.0
    num_pairs: int = 256  # the map-style dataset: pair i of a fixed random set
    data_seed: int = 0

    def build_task(self) -> ToyTask:
        return ToyTask(self)


class ToyBlock(nn.Module):
    """Pre-norm residual MLP block: (B, D) -> (B, D)."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc(F.gelu(self.norm(x))))


class ToyRegressor(nn.Module):
    _no_split_modules = ["ToyBlock"]  # the unit of activation checkpointing, compile, FSDP2

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.in_dim, cfg.width)
        self.blocks = nn.ModuleList(ToyBlock(cfg.width, cfg.dropout) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # (B, in_dim) -> (B, D)
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # (B, D) -> (B, out_dim)


def regression_pairs(cfg: ToyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset: x (num_pairs, in_dim) ~ N(0, 1) and a learnable target y = tanh(x A)."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    x = torch.randn(cfg.num_pairs, cfg.in_dim, generator=g)
    return x, torch.tanh(x @ torch.randn(cfg.in_dim, cfg.out_dim, generator=g))


class PairLoader:
    """This rank's endless batches of pairs; its position is the samples it has consumed.

    Map-style: global sample g is pair ``g % num_pairs``, and rank r of w takes the global
    samples r, r + w, r + 2w, ..., so the w ranks' batches of one step make up the batch of
    one process (and a position moves between world sizes as ``data_position`` expects).
    """

    def __init__(self, x, y, batch_size: int, rank: int, world: int):
        self.x, self.y, self.batch_size, self.rank, self.world = x, y, batch_size, rank, world
        self.samples, self.skipped = 0, 0  # nothing here is unreadable: skipped stays 0

    def __iter__(self):
        while True:
            local = self.samples + torch.arange(self.batch_size)
            index = (self.rank + self.world * local) % len(self.x)
            self.samples += self.batch_size
            yield {"x": self.x[index], "y": self.y[index]}

    def state_dict(self) -> dict:
        return {"samples": self.samples, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.skipped = int(state["samples"]), int(state.get("skipped", 0))


class ToyTask(Task):
    cfg: ToyConfig

    def build_model(self, frozen_from: nn.Module | None = None) -> ToyRegressor:
        return ToyRegressor(self.cfg)  # no frozen part to share

    def build_loader(self, stage, batch_size: int, rank: int, world: int) -> PairLoader:
        return PairLoader(*regression_pairs(self.cfg), batch_size, rank, world)

    def synthetic_batch(self, stage, batch_size=None, *, device="cpu", seed=0) -> dict:
        b, gen = batch_size or stage.batch_size, torch.Generator().manual_seed(seed)
        x = torch.randn(b, self.cfg.in_dim, generator=gen)
        y = torch.rand(b, self.cfg.out_dim, generator=gen) * 2 - 1  # tanh's range
        return {"x": x.to(device), "y": y.to(device)}

    def describe_stage(self, stage) -> str:
        return f"batch {stage.batch_size}"

    def forward_backward(self, train_model, model, batch, accum_steps, autocast):
        """MSE of the batch in ``accum_steps`` micro-batches, each weighted 1 / k (the batch
        mean), the gradient sync on the last only."""
        loss = torch.zeros((), device=batch["x"].device)
        for j, mb in enumerate(split_batch(batch, accum_steps)):
            last = j == accum_steps - 1
            with contextlib.nullcontext() if last else no_grad_sync(train_model):
                with autocast():
                    micro = F.mse_loss(train_model(mb["x"]).float(), mb["y"]) / accum_steps
                micro.backward()
            loss += micro.detach()
        return {"loss": loss}

    def export(self, model: nn.Module, path: str, card: dict, stage) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in model_state_dict(model).items()}
        save_file(weights, str(out / "model.safetensors"))
        meta = {"task": self.cfg.TASK, "config": to_dict(self.cfg), "card": card}
        (out / "config.json").write_text(json.dumps(meta, indent=2))
