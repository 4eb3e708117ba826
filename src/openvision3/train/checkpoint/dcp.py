"""The ``dcp`` checkpoint format: ``torch.distributed.checkpoint`` for tensors, JSON for the rest.

Layout of ``run_dir/checkpoints/step_{step:08d}/``::

    .metadata, __<rank>_0.distcp   DCP: the tensors of the model (``model.<name>``), the
                                   optimizer (``optimizer.state.<name>.exp_avg``, ...) and the
                                   EMA (``ema.params.<name>``, ``ema.buffers.<name>``); every
                                   rank writes its own shards (tensors only, read back with
                                   ``torch.load(weights_only=True)``; DCP's ``.metadata`` index
                                   is a pickle of DCP's own classes: trusted sources only)
    optimizer.json                 the optimizer state's non-tensor part (param groups, LRs),
                                   with references to the DCP keys of its tensors
    state.json                     written by ``store.py``: format, step, world size,
                                   scheduler, every rank's RNG states, the file manifest, the
                                   EMA's update count, the caller's state

Names are the unwrapped model's: ``get_state_dict`` (``torch.distributed.checkpoint.state_dict``)
strips the FSDP / activation-checkpoint / ``torch.compile`` wrapper parts and keys the optimizer
state by parameter name, so sharded (``DTensor``) and plain tensors share one format and DCP
reshards on load: a run saved on N ranks resumes on M ranks, with FSDP2, DDP or one process.
The EMA's shadows have the layout of the parameters they follow (sharded under FSDP2), so they
are saved and resharded the same way. The frozen VAE is never saved (``models/vae.py``).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from openvision3.distributed.process import is_distributed, is_main
from openvision3.train.checkpoint.codec import decode, encode, read_json, reading, write_json
from openvision3.wrappers import unwrap_model


def _reader(path: Path) -> dict[str, Any]:
    return {"storage_reader": FileSystemReader(path), "no_dist": not is_distributed()}


@contextlib.contextmanager
def _one_process_ok():
    """DCP warns whenever it runs without a process group; here that is intended (one-GPU
    runs, export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def _state_dicts(model: nn.Module, optimizer) -> tuple[dict, dict | None]:
    """Model and optimizer state dicts by parameter name (sharded under FSDP2, else full)."""
    module = unwrap_model(model)
    if optimizer is None:
        return get_model_state_dict(module), None
    return get_state_dict(module, optimizer)


# ---------------------------------------------------------------------------------------------
# Save / load (called by store.save_checkpoint / load_checkpoint on every rank)


def save_dcp(directory: Path, model: nn.Module, optimizer, ema) -> dict[str, Any]:
    """Write the tensors of ``model``/``optimizer``/``ema`` into ``directory`` (every rank its
    shards) and, on rank 0, ``optimizer.json``. Returns the entries for ``state.json``."""
    model_sd, optim_sd = _state_dicts(model, optimizer)
    tensors: dict[str, Any] = {"model": model_sd}
    optim_tree = None
    if optim_sd is not None:
        tensors["optimizer"] = {}
        optim_tree = encode(optim_sd, tensors["optimizer"])
    if ema is not None:
        tensors["ema"] = {"params": ema.params, "buffers": ema.buffers}
    with _one_process_ok():
        dcp.save(tensors, storage_writer=FileSystemWriter(directory), no_dist=not is_distributed())
    if optim_tree is not None and is_main():
        write_json(directory / "optimizer.json", optim_tree)
    return {"ema": None if ema is None else {"num_updates": ema.num_updates, "decay": ema.decay}}


def saved_keys(path: Path) -> set[str]:
    """Flattened tensor names held by a DCP checkpoint (``model.encoder.norm.weight``, ...)."""
    with reading(path / ".metadata"):
        return set(FileSystemReader(path).read_metadata().state_dict_metadata)


def _check_names(path: Path, saved: set[str], prefix: str, wanted: set[str]) -> None:
    have = {k[len(prefix) :] for k in saved if k.startswith(prefix)}
    if have != wanted:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        raise KeyError(f"{path}: {prefix[:-1]} names differ: missing {missing}, unexpected {extra}")


def load_dcp(path: Path, meta: dict, model: nn.Module, optimizer, ema, strict: bool = True) -> None:
    """Load a ``dcp`` checkpoint into objects of any world size / parallelism."""
    saved = saved_keys(path)
    model_sd, optim_sd = _state_dicts(model, optimizer)
    if strict:
        _check_names(path, saved, "model.", set(model_sd))
    targets: dict[str, Any] = {"model": model_sd}
    optim_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        if not (path / "optimizer.json").is_file():
            raise FileNotFoundError(f"{path} holds no optimizer state")
        encode(optim_sd, optim_tensors)
        targets["optimizer"] = optim_tensors
    if ema is not None:
        if meta.get("ema") is None:
            raise FileNotFoundError(f"{path} holds no EMA weights")
        if strict:
            _check_names(path, saved, "ema.params.", set(ema.params))
            _check_names(path, saved, "ema.buffers.", set(ema.buffers))
        targets["ema"] = {"params": ema.params, "buffers": ema.buffers}
    # DCP loads in place, into each target's layout (full tensors or this rank's shards).
    with _one_process_ok(), reading(path):
        dcp.load(
            targets,
            planner=DefaultLoadPlanner(allow_partial_load=not strict),
            **_reader(path),
        )
    module = unwrap_model(model)
    set_model_state_dict(module, model_sd, options=StateDictOptions(strict=strict))
    if optimizer is not None:
        tree = read_json(path / "optimizer.json")
        set_optimizer_state_dict(module, optimizer, decode(tree, optim_tensors))
    if ema is not None:
        ema.num_updates = int(meta["ema"]["num_updates"])


# ---------------------------------------------------------------------------------------------
# Weights only (init_from, export)


def load_dcp_weights(
    path: Path, model: nn.Module, ema: bool = False, strict: bool = False
) -> tuple[list[str], list[str]]:
    """Model (or EMA) weights of a ``dcp`` checkpoint into an unsharded ``model``. Under a
    process group this is collective (every rank loads the full tensors); without one it reads
    the shards of every rank in one process."""
    module = unwrap_model(model)
    saved = saved_keys(path)
    own = module.state_dict()
    prefix = "ema.params." if ema else "model."
    have = {k[len(prefix) :] for k in saved if k.startswith(prefix)}
    if ema and not have:
        raise FileNotFoundError(f"{path} holds no EMA weights")
    # EMA shadows cover the trainable parameters: the rest (buffers, frozen parameters) come
    # from the model part.
    model_have = {k[len("model.") :] for k in saved if k.startswith("model.")}
    available = have | model_have if ema else have
    missing, unexpected = sorted(set(own) - available), sorted(have - set(own))
    if strict and (missing or unexpected):
        raise KeyError(f"{path}: missing {missing}, unexpected {unexpected}")
    targets = {k: own[k] for k in sorted(have & set(own))}
    if ema:
        model_part = {k: own[k] for k in sorted(set(own) - have) if k in model_have}
        with _one_process_ok(), reading(path):
            dcp.load({"ema": {"params": targets}, "model": model_part}, **_reader(path))
    else:
        with _one_process_ok(), reading(path):
            dcp.load({"model": targets}, **_reader(path))
    return missing, unexpected
