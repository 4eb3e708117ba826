"""Checkpoint directories: atomic save, verification, load and resume, for both formats.

:func:`save_checkpoint` and :func:`load_checkpoint` are called on every rank; ``state.json``
records the format (``single``: ``single.py``; ``dcp``: ``dcp.py``) and loading dispatches on
it. ``state.json`` also holds, in either format: the step, the world size, the scheduler state,
every rank's RNG states (``rng``, one entry per rank, in rank order), the size and sha256 of
every other file of the checkpoint (``files``) and the caller's ``state`` (samples seen, stage,
data position, config).

Writes are atomic: files go to ``step_X.tmp-<pid>/`` (rank 0's pid, shared with every rank) and
are fsynced, the directory is renamed to ``step_X`` and only then is ``checkpoints/latest`` (a
text file naming it) replaced. A crash leaves at most a ``.tmp-`` directory, which
:func:`find_latest` ignores. Multi-node runs need ``run_dir`` on a shared filesystem.

:func:`resume` loads the newest checkpoint that passes :func:`verify_checkpoint` and loads; a
damaged one (a truncated file, a failed copy) is reported in one warning line and the next older
one is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openvision3.distributed.parallelize import is_sharded
from openvision3.distributed.process import (
    barrier,
    broadcast_object,
    gather_object,
    get_rank,
    get_world_size,
    is_main,
)
from openvision3.errors import CheckpointError
from openvision3.train.checkpoint.codec import (
    STATE_NAME,
    decode,
    encode,
    file_manifest,
    fsync,
    read_json,
    read_tensors,
    rng_from_json,
    rng_state,
    rng_to_json,
    set_rng_state,
    verify_files,
    write_json,
)
from openvision3.train.checkpoint.dcp import load_dcp, load_dcp_weights, save_dcp
from openvision3.train.checkpoint.single import load_single, load_single_weights, save_single

log = logging.getLogger(__name__)

# 1: a ``single`` checkpoint held rank 0's RNG state in rng.safetensors; no file manifest.
# 2: every rank's RNG state in state.json for both formats; the file manifest.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
RESUME_CHOICES = "--train.resume auto | none | <checkpoint directory>"


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
        if m and d.is_dir() and (d / STATE_NAME).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint of ``run_dir`` or ``None``.

    Scans the directories rather than trusting ``latest`` so a crash between the rename and the
    pointer update still resumes from the newest complete checkpoint.
    """
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# Save


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
    valid for DDP and one process), loadable on any world size.
    ``auto``: ``dcp`` when the model is sharded, else ``single``.
    ``state``: JSON-able caller state, conventionally ``samples_seen``, ``stage``, ``data`` (the
    data loader's state) and ``config``. ``ema``: an :class:`openvision3.train.ema.EMA`.
    ``keep_last``: keep only this many newest complete checkpoints.
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
    tmp = Path(broadcast_object(str(root / f"{final.name}.tmp-{os.getpid()}")))
    if is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sched_tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "step": step,
        "world_size": get_world_size(),
        "scheduler": None if scheduler is None else encode(scheduler.state_dict(), sched_tensors),
        "rng": gather_object(rng_to_json(rng_state())),
        "state": state or {},
    }
    if sched_tensors:
        raise TypeError("scheduler state must be JSON-able (it holds tensors)")
    if fmt == "dcp":
        barrier()  # the directory exists before any rank writes into it
        meta.update(save_dcp(tmp, model, optimizer, ema))
    elif is_main():
        save_single(tmp, model, optimizer, ema)
    barrier()  # every rank's files are written before rank 0 records them
    if is_main():
        meta["files"] = file_manifest(tmp)
        write_json(tmp / STATE_NAME, meta)  # last: marks the directory complete
        fsync(tmp)
        _publish(tmp, final)
        if keep_last is not None:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old)
    barrier()
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` directory to ``final``, then point ``latest`` at it."""
    root = final.parent
    if final.exists():  # saving the same step twice: move the old one aside first
        old = root / f"{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    fsync(root)
    pointer = root / f"latest.tmp-{os.getpid()}"
    pointer.write_text(final.name + "\n")
    fsync(pointer)
    os.replace(pointer, root / "latest")
    fsync(root)


# ---------------------------------------------------------------------------------------------
# Verify / load


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of a checkpoint directory, its format version checked."""
    meta = read_json(Path(path) / STATE_NAME)
    if meta.get("format") not in ("single", "dcp"):
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"checkpoint format_version {meta.get('format_version')} is not one of "
            f"{READABLE_VERSIONS}"
        )
    return meta


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of ``path`` after checking every file's size and sha256 against it;
    :class:`CheckpointError` names the first file that differs (format 1: no manifest, no
    check)."""
    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{path / STATE_NAME} is missing (an incomplete checkpoint)")
    meta = read_meta(path)
    verify_files(path, meta.get("files", {}))
    return meta


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema=None,
    strict: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint directory into the given objects, and this rank's RNG states.

    Call on every rank. Components passed in must exist in the checkpoint. ``strict`` applies
    to the model's and the EMA's parameter names. A ``dcp`` checkpoint loads into any world
    size and any parallelism (1 process, DDP, FSDP2); a ``single`` one into unsharded models.
    RNG: each rank its own saved state when the world size is unchanged, else rank 0's.
    A file that cannot be read raises :class:`CheckpointError` naming it.
    Returns the caller's saved ``state`` plus ``"step"``.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta["format"] == "dcp":
        load_dcp(path, meta, model, optimizer, ema, strict=strict)
    else:
        if is_sharded(model):
            raise ValueError(
                f"{path} is a 'single' checkpoint; an FSDP2-sharded model loads 'dcp' ones. "
                "Resume it once without FSDP (train.parallel=ddp) with train.ckpt_format=dcp, "
                "or start from its weights with train.init_from"
            )
        load_single(path, model, optimizer, ema, strict)
    if scheduler is not None:
        if meta["scheduler"] is None:
            raise FileNotFoundError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(decode(meta["scheduler"], {}))
    set_rng_state(_rank_rng(path, meta))
    return {"step": meta["step"], **meta["state"]}


def _rank_rng(path: Path, meta: dict) -> dict[str, Any]:
    """This rank's saved RNG states (rank 0's on another world size)."""
    streams = meta["rng"]
    if isinstance(streams, dict):  # format 1, single: rank 0's tree + rng.safetensors
        return decode(streams, read_tensors(path / "rng.safetensors"))
    rank = get_rank()
    return rng_from_json(streams[rank] if len(streams) == get_world_size() else streams[0])


def resume(
    run_dir: str | os.PathLike, how: str, model: nn.Module, optimizer, scheduler, ema
) -> tuple[Path, dict[str, Any]] | None:
    """Load what ``how`` names (``--train.resume``) into the objects :func:`load_checkpoint`
    takes (None for the absent ones), on every rank; ``(path, state)`` or None.

    ``auto``: the newest checkpoint of ``run_dir`` that verifies and loads; each one that does
    not is reported in one warning line and the next older one is tried; None without any.
    ``none``: None. Otherwise a checkpoint directory, which must verify and load. When nothing
    usable is left, :class:`CheckpointError` names the file and the ``--train.resume`` choices.
    """
    if how == "none":
        return None
    candidates = list(reversed(list_checkpoints(run_dir))) if how == "auto" else [Path(how)]
    if not candidates:
        return None
    first_error = None
    for i, path in enumerate(candidates):
        error = _try_load(path, model, optimizer, scheduler, ema)
        if error is None:
            return path, load_state(path)
        first_error = first_error or error
        if i + 1 < len(candidates) and is_main():
            log.warning("skipping checkpoint %s: %s; trying %s", path, error, candidates[i + 1])
    older = len(candidates) - 1
    also = f"; the {older} older checkpoint(s) of this run fail too" if older else ""
    raise CheckpointError(f"{first_error}{also}; choose {RESUME_CHOICES}")


def load_state(path: Path) -> dict[str, Any]:
    meta = read_meta(path)
    return {"step": meta["step"], **meta["state"]}


def _try_load(path: Path, model, optimizer, scheduler, ema) -> str | None:
    """Verify (rank 0) and load (every rank) ``path``; the reason it is unusable, or None.
    Every rank gets the same answer."""
    error = None
    if is_main():
        try:
            verify_checkpoint(path)
        except (CheckpointError, ValueError) as err:
            error = str(err)
    error = broadcast_object(error)
    if error is None:
        try:
            load_checkpoint(path, model, optimizer, scheduler, ema)
        except CheckpointError as err:
            error = str(err)
        errors = [e for e in gather_object(error) if e is not None]
        error = errors[0] if errors else None
    return error


def load_weights(
    path: str | os.PathLike, model: nn.Module, ema: bool = False, strict: bool = False
) -> tuple[list[str], list[str]]:
    """Load model weights from an export (``model.safetensors``) or a training checkpoint of
    either format into an unsharded ``model``; ``ema``: the checkpoint's EMA weights instead of
    the live ones. Returns (missing, unexpected) names, as ``load_state_dict``.

    On a ``dcp`` checkpoint under a process group this is collective (every rank loads the
    full tensors); without one it reads the shards of every rank in one process.
    """
    path = Path(path)
    if not (path / STATE_NAME).is_file() or read_meta(path)["format"] == "single":
        return load_single_weights(path, model, ema, strict)
    return load_dcp_weights(path, model, ema, strict)
