"""Training checkpoints: tensors and JSON, no pickled Python objects of ours.

Two formats behind the same functions (:func:`save_checkpoint`, :func:`load_checkpoint`, both
called on every rank); ``state.json`` records the format and loading dispatches on it.

``single`` (one process, DDP): rank 0 writes plain state dicts into
``run_dir/checkpoints/step_{step:08d}/``::

    model.safetensors       unwrapped state dict (no ``module.`` / ``_orig_mod.`` in names)
    optimizer.safetensors   optimizer state tensors (exp_avg, exp_avg_sq, step, ...)
    optimizer.json          the rest of optimizer.state_dict(), with references to those tensors
    ema.safetensors         EMA shadow weights (when an EMA is given) ...
    ema.json                ... and its update count
    rng.safetensors         torch CPU (and CUDA) generator states
    state.json              format, step, world size, scheduler state, python/numpy RNG, the
                            caller's state (samples_seen, stage, data loader state, config):
                            written last

``dcp`` (FSDP2; valid for any parallelism): every rank writes its shards of the model,
optimizer and EMA with ``torch.distributed.checkpoint``; a checkpoint saved on N ranks loads
on M ranks, sharded or not. See :mod:`openvision3.train.checkpoint_dcp` for its layout.

Writes are atomic: files go to ``step_X.tmp-<pid>/`` (rank 0's pid, shared with every rank) and
are fsynced, the directory is renamed to ``step_X`` and only then is ``checkpoints/latest`` (a
text file naming it) replaced. A crash leaves at most a ``.tmp-`` directory, which
:func:`find_latest` ignores. Multi-node runs need ``run_dir`` on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from openvision3.distributed.parallelize import is_sharded
from openvision3.wrappers import WRAPPER_ATTRS, unwrap_model

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
# Wrapper attributes whose names leak into state-dict keys: torch.compile, DDP/DataParallel,
# torch.distributed activation-checkpoint wrappers (the block wrappers of parallelize.py) and the
# FSDP1 wrapper.
_WRAPPER_PARTS = (*WRAPPER_ATTRS, "_fsdp_wrapped_module")


def clean_key(key: str) -> str:
    """State-dict key without wrapper parts: leading ``module.`` and any ``_orig_mod.`` (e.g. a
    block compiled on its own) or activation-checkpoint wrapper part."""
    while key.startswith("module."):
        key = key[len("module.") :]
    return ".".join(p for p in key.split(".") if p not in _WRAPPER_PARTS)


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``unwrap_model(model).state_dict()`` with :func:`clean_key` names."""
    sd = unwrap_model(model).state_dict()
    out = {clean_key(k): v for k, v in sd.items()}
    if len(out) != len(sd):
        raise ValueError("two state-dict keys differ only by wrapper prefixes")
    return out


def load_model_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
) -> None:
    """Load clean-named ``state_dict`` into ``model``, wrapped or not (inverse of
    :func:`model_state_dict`). Tied weights load twice with the same values."""
    module = unwrap_model(model)
    names = {clean_key(k): k for k in module.state_dict()}
    sd = {names.get(k, k): v for k, v in state_dict.items()}
    module.load_state_dict(sd, strict=strict)


# ---------------------------------------------------------------------------------------------
# Tensors + JSON codec: nested dict/list/tuple/scalars with tensors at the leaves.
# Tensors are replaced by {"__tensor__": key} and collected for a safetensors file; tuples and
# dicts with non-string keys (optimizer state is keyed by int) are tagged so decoding is exact.


def encode(obj: Any, tensors: dict[str, torch.Tensor], key: str = "") -> Any:
    """JSON-able tree of ``obj``; its tensors are added to ``tensors`` under dotted path keys."""
    sub = (lambda k: f"{key}.{k}") if key else str
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ValueError(f"duplicate tensor key {key!r}")
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, sub(k)) for k, v in obj.items()}
        return {"__items__": [[k, encode(v, tensors, sub(k))] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, sub(i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, sub(i)) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot store {type(obj).__name__} at {key!r}: checkpoints hold tensors and JSON"
    )


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(decode(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {k: decode(v, tensors) for k, v in tree["__items__"]}
        return {k: decode(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    return tree


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse to fsync directories
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors file of CPU contiguous tensors; storage shared between entries (tied weights)
    is cloned, because safetensors refuses aliased tensors."""
    seen, out = set(), {}
    for k, t in tensors.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(ptr)
        out[k] = t.contiguous()
    save_file(out, str(path), metadata=metadata)
    _fsync(path)


def _save_tree(directory: Path, name: str, obj: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(obj, tensors)
    _write_tensors(directory / f"{name}.safetensors", tensors)
    _write_json(directory / f"{name}.json", tree)


def _load_tree(directory: Path, name: str) -> Any:
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return decode(json.loads((directory / f"{name}.json").read_text()), tensors)


# ---------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict[str, Any]:
    """Torch CPU/CUDA, python ``random`` and numpy global generator states (tensors and JSON)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(
                f"checkpoint has {len(state['cuda'])} CUDA RNG states, "
                f"this process sees {torch.cuda.device_count()} devices"
            )
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Save / find / load


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resolve_format(model: nn.Module, format: str) -> str:
    """``auto`` -> ``dcp`` for an FSDP2-sharded model, else ``single``."""
    if format not in ("auto", "single", "dcp"):
        raise ValueError(
            f"unknown checkpoint format {format!r}; expected 'auto', 'single' or 'dcp'"
        )
    sharded = is_sharded(model)
    if format == "single" and sharded:
        raise ValueError(
            "an FSDP2-sharded model cannot be saved in the 'single' format (each rank holds "
            "only its shards); use format 'dcp' (or 'auto')"
        )
    if format == "auto":
        return "dcp" if sharded else "single"
    return format


def _same_on_all_ranks(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/checkpoints/step_{step:08d}``."""
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories of ``run_dir``, oldest first (``.tmp-`` dirs excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "state.json").is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint of ``run_dir`` or ``None``.

    Scans the directories rather than trusting ``latest`` so a crash between the rename and the
    pointer update still resumes from the newest complete checkpoint.
    """
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema=None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = None,
    format: str = "auto",
) -> Path:
    """Atomically write checkpoint ``step`` of ``run_dir``; returns its directory.

    Call on every rank. ``single``: rank 0 writes plain state dicts (single process, DDP).
    ``dcp``: every rank writes its shards with ``torch.distributed.checkpoint`` (FSDP2; also
    valid for DDP and one process), loadable on any world size (:mod:`checkpoint_dcp`).
    ``auto``: ``dcp`` when the model is sharded, else ``single``.
    ``state``: JSON-able caller state, conventionally ``samples_seen``, ``stage``, ``data`` (the
    data loader's state) and ``config``. ``ema``: an :class:`openvision3.train.ema.EMA`.
    ``keep_last``: keep only this many newest complete checkpoints. RNG states: the writing
    process's (``single``), every rank's (``dcp``).
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    fmt = resolve_format(model, format)
    try:
        json.dumps(state)
    except TypeError as e:
        raise TypeError(f"checkpoint state must be JSON-able: {e}") from None
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    # Every rank writes into rank 0's temporary directory (dcp); rank 0 alone renames it.
    tmp = Path(_same_on_all_ranks(str(root / f"{final.name}.tmp-{os.getpid()}")))
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sched_tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "step": step,
        "world_size": _world_size(),
        "scheduler": None if scheduler is None else encode(scheduler.state_dict(), sched_tensors),
        "state": state or {},
    }
    if sched_tensors:
        raise TypeError("scheduler state must be JSON-able (it holds tensors)")
    if fmt == "dcp":
        from openvision3.train.checkpoint_dcp import save_dcp

        _barrier()  # the directory exists before any rank writes into it
        meta.update(save_dcp(tmp, model, optimizer, ema))
    elif _rank() == 0:
        meta["rng"] = _save_single(tmp, model, optimizer, ema)
    if _rank() == 0:
        _write_json(tmp / "state.json", meta)  # last: marks the directory complete
        _fsync(tmp)
        _publish(tmp, final)
        if keep_last is not None:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return final


def _save_single(directory: Path, model: nn.Module, optimizer, ema) -> Any:
    """Rank 0's plain state dicts as safetensors + JSON; returns the RNG tree for state.json."""
    _write_tensors(directory / "model.safetensors", model_state_dict(model))
    if optimizer is not None:
        _save_tree(directory, "optimizer", optimizer.state_dict())
    if ema is not None:
        _save_tree(directory, "ema", ema.state_dict())
    rng_tensors: dict[str, torch.Tensor] = {}
    rng_tree = encode(rng_state(), rng_tensors)
    _write_tensors(directory / "rng.safetensors", rng_tensors)
    return rng_tree


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` directory to ``final``, then point ``latest`` at it."""
    root = final.parent
    if final.exists():  # saving the same step twice: move the old one aside first
        old = root / f"{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    _fsync(root)
    pointer = root / f"latest.tmp-{os.getpid()}"
    pointer.write_text(final.name + "\n")
    _fsync(pointer)
    os.replace(pointer, root / "latest")
    _fsync(root)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of a checkpoint directory, its format version checked."""
    meta = json.loads((Path(path) / "state.json").read_text())
    if meta.get("format") not in ("single", "dcp"):
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format_version {meta.get('format_version')} != {FORMAT_VERSION}"
        )
    return meta


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema=None,
    strict: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint directory into the given objects, and the RNG states of this process.

    Call on every rank. Components passed in must exist in the checkpoint. ``strict`` applies
    to the model's and the EMA's parameter names. A ``dcp`` checkpoint loads into any world
    size and any parallelism (1 process, DDP, FSDP2); a ``single`` one into unsharded models.
    Returns the caller's saved ``state`` plus ``"step"``.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta["format"] == "dcp":
        from openvision3.train.checkpoint_dcp import load_dcp

        load_dcp(path, meta, model, optimizer, ema, strict=strict)
    else:
        if is_sharded(model):
            raise ValueError(
                f"{path} is a 'single' checkpoint; an FSDP2-sharded model loads 'dcp' ones. "
                "Resume it once without FSDP (train.parallel=ddp) with train.ckpt_format=dcp, "
                "or start from its weights with train.init_from"
            )
        _load_single(path, meta, model, optimizer, ema, strict)
    if scheduler is not None:
        if meta["scheduler"] is None:
            raise FileNotFoundError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(decode(meta["scheduler"], {}))
    return {"step": meta["step"], **meta["state"]}


def _load_single(path: Path, meta: dict, model, optimizer, ema, strict: bool) -> None:
    load_model_state_dict(model, load_file(str(path / "model.safetensors")), strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(_load_tree(path, "optimizer"))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise FileNotFoundError(f"{path} holds no EMA weights")
        ema.load_state_dict(_load_tree(path, "ema"), strict=strict)
    set_rng_state(decode(meta["rng"], load_file(str(path / "rng.safetensors"))))
