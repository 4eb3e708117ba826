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
    state.json                     written by ``checkpoint.py``: format, step, world size,
                                   scheduler, every rank's RNG states (base64 in JSON), the
                                   EMA's update count, the caller's state

Names are the unwrapped model's: ``get_state_dict`` (``torch.distributed.checkpoint.state_dict``)
strips the FSDP / activation-checkpoint / ``torch.compile`` wrapper parts and keys the optimizer
state by parameter name, so sharded (``DTensor``) and plain tensors share one format and DCP
reshards on load: a run saved on N ranks resumes on M ranks, with FSDP2, DDP or one process.
The EMA's shadows have the layout of the parameters they follow (sharded under FSDP2), so they
are saved and resharded the same way. The frozen VAE is never saved (``models/vae.py``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
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

from openvision3.distributed.process import gather_object
from openvision3.train.checkpoint import (
    _load_tree,
    _write_json,
    decode,
    encode,
    read_meta,
    rng_state,
    set_rng_state,
)
from openvision3.wrappers import unwrap_model


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _reader(path: Path) -> dict[str, Any]:
    return {"storage_reader": FileSystemReader(path), "no_dist": not _distributed()}


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
# RNG states as JSON (each rank's; torch generator states are uint8 tensors -> base64)


def rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`checkpoint.rng_state` output -> JSON-able tree."""
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(state, tensors)
    for key, t in tensors.items():
        if t.dtype != torch.uint8:
            raise TypeError(f"RNG state {key!r} is {t.dtype}, expected uint8")
    raw = {
        k: base64.b64encode(t.contiguous().numpy().tobytes()).decode() for k, t in tensors.items()
    }
    return {"tree": tree, "tensors": raw}


def rng_from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`rng_to_json`."""
    tensors = {
        k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8)
        for k, v in obj["tensors"].items()
    }
    return decode(obj["tree"], tensors)


# ---------------------------------------------------------------------------------------------
# Save / load (called by checkpoint.save_checkpoint / load_checkpoint on every rank)


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
        dcp.save(tensors, storage_writer=FileSystemWriter(directory), no_dist=not _distributed())
    streams = gather_object(rng_to_json(rng_state()))
    if optim_tree is not None and (not _distributed() or dist.get_rank() == 0):
        _write_json(directory / "optimizer.json", optim_tree)
    return {
        "rng": streams,
        "ema": None if ema is None else {"num_updates": ema.num_updates, "decay": ema.decay},
    }


def saved_keys(path: Path) -> set[str]:
    """Flattened tensor names held by a DCP checkpoint (``model.encoder.norm.weight``, ...)."""
    return set(FileSystemReader(path).read_metadata().state_dict_metadata)


def _check_names(path: Path, saved: set[str], prefix: str, wanted: set[str]) -> None:
    have = {k[len(prefix) :] for k in saved if k.startswith(prefix)}
    if have != wanted:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        raise KeyError(f"{path}: {prefix[:-1]} names differ: missing {missing}, unexpected {extra}")


def load_dcp(path: Path, meta: dict, model: nn.Module, optimizer, ema, strict: bool = True) -> None:
    """Load a ``dcp`` checkpoint into objects of any world size / parallelism, and this rank's
    RNG states (its own stream when the world size is unchanged, else rank 0's)."""
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
    with _one_process_ok():
        dcp.load(
            targets,
            planner=DefaultLoadPlanner(allow_partial_load=not strict),
            **_reader(path),
        )
    module = unwrap_model(model)
    set_model_state_dict(module, model_sd, options=StateDictOptions(strict=strict))
    if optimizer is not None:
        tree = json.loads((path / "optimizer.json").read_text())
        set_optimizer_state_dict(module, optimizer, decode(tree, optim_tensors))
    if ema is not None:
        ema.num_updates = int(meta["ema"]["num_updates"])
    streams = meta["rng"]
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    set_rng_state(rng_from_json(streams[rank] if len(streams) == world else streams[0]))


# ---------------------------------------------------------------------------------------------
# Weights only (init_from, export): exports, ``single`` and ``dcp`` checkpoints


def load_weights(
    path: str | Path, model: nn.Module, ema: bool = False, strict: bool = False
) -> tuple[list[str], list[str]]:
    """Load model weights from an export (``model.safetensors``) or a training checkpoint of
    either format into an unsharded ``model``; ``ema``: the checkpoint's EMA weights instead of
    the live ones. Returns (missing, unexpected) names, as ``load_state_dict``.

    On a ``dcp`` checkpoint under a process group this is collective (every rank loads the
    full tensors); without one it reads the shards of every rank in one process.
    """
    from safetensors.torch import load_file

    path = Path(path)
    module = unwrap_model(model)
    if not (path / "state.json").is_file() or read_meta(path)["format"] == "single":
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} does not exist")
        sd = load_file(str(weights))
        if ema:
            if not (path / "ema.safetensors").is_file():
                raise FileNotFoundError(f"{path} holds no EMA weights")
            sd.update(_load_tree(path, "ema")["params"])
        result = module.load_state_dict(sd, strict=strict)
        return list(result.missing_keys), list(result.unexpected_keys)
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
        with _one_process_ok():
            dcp.load({"ema": {"params": targets}, "model": model_part}, **_reader(path))
    else:
        with _one_process_ok():
            dcp.load({"model": targets}, **_reader(path))
    return missing, unexpected
