"""The ``single`` checkpoint format: rank 0 writes plain state dicts (one process, DDP).

Layout of ``run_dir/checkpoints/step_{step:08d}/``::

    model.safetensors       unwrapped state dict (no ``module.`` / ``_orig_mod.`` in names)
    optimizer.safetensors   optimizer state tensors (exp_avg, exp_avg_sq, step, ...)
    optimizer.json          the rest of optimizer.state_dict(), with references to those tensors
    ema.safetensors         EMA shadow weights (when an EMA is given) ...
    ema.json                ... and its update count
    state.json              written by ``store.py``, last
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from openvision3.train.checkpoint.codec import (
    load_model_state_dict,
    load_tree,
    model_state_dict,
    read_tensors,
    save_tree,
    write_tensors,
)
from openvision3.wrappers import unwrap_model

WEIGHTS_NAME = "model.safetensors"


def save_single(directory: Path, model: nn.Module, optimizer, ema) -> None:
    """Rank 0's plain state dicts as safetensors + JSON."""
    write_tensors(directory / WEIGHTS_NAME, model_state_dict(model))
    if optimizer is not None:
        save_tree(directory, "optimizer", optimizer.state_dict())
    if ema is not None:
        save_tree(directory, "ema", ema.state_dict())


def load_single(path: Path, model: nn.Module, optimizer, ema, strict: bool = True) -> None:
    """Restore what :func:`save_single` wrote into unsharded objects."""
    load_model_state_dict(model, read_tensors(path / WEIGHTS_NAME), strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(load_tree(path, "optimizer"))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise FileNotFoundError(f"{path} holds no EMA weights")
        ema.load_state_dict(load_tree(path, "ema"), strict=strict)


def load_single_weights(
    path: Path, model: nn.Module, ema: bool, strict: bool
) -> tuple[list[str], list[str]]:
    """Model (or EMA) weights of an export or a ``single`` checkpoint into ``model``."""
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    sd = read_tensors(weights)
    if ema:
        if not (path / "ema.safetensors").is_file():
            raise FileNotFoundError(f"{path} holds no EMA weights")
        sd.update(load_tree(path, "ema")["params"])
    result = unwrap_model(model).load_state_dict(sd, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)
