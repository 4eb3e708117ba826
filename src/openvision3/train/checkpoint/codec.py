"""What both checkpoint formats share: clean parameter names, the tensors + JSON codec, RNG
states, durable file writes and the file manifest.

- Names: :func:`clean_key` strips the wrapper parts that ``torch.compile``, DDP and activation
  checkpointing put into state-dict keys, so a checkpoint loads into a model wrapped or not.
- Codec: :func:`encode` turns a nested dict / list / tuple with tensors at the leaves into a
  JSON tree plus a flat ``{dotted key: tensor}`` dict (safetensors' unit); :func:`decode`
  inverts it exactly (tuples and non-string dict keys are tagged).
- RNG: :func:`rng_state` is one rank's generator states (torch CPU, this rank's CUDA device,
  python ``random``, numpy); :func:`rng_to_json` makes it JSON (base64 for the torch bytes),
  so every rank's state fits in ``state.json`` in either format.
- Manifest: :func:`file_manifest` records each file's size and sha256 at save;
  :func:`verify_files` checks them before a resume and names the first file that differs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from openvision3.errors import CheckpointError
from openvision3.files import sha256_file
from openvision3.wrappers import WRAPPER_ATTRS, unwrap_model

# Wrapper attributes whose names leak into state-dict keys: torch.compile, DDP/DataParallel,
# torch.distributed activation-checkpoint wrappers (the block wrappers of parallelize.py) and the
# FSDP1 wrapper.
_WRAPPER_PARTS = (*WRAPPER_ATTRS, "_fsdp_wrapped_module")
STATE_NAME = "state.json"  # written last: its presence marks a checkpoint complete


# ---------------------------------------------------------------------------------------------
# Parameter names


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


# ---------------------------------------------------------------------------------------------
# Files: durable writes, reads that fail with the file's name


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse to fsync directories
        pass
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
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
    fsync(path)


@contextlib.contextmanager
def reading(path: Path):
    """Turn a failure to read or parse ``path`` into a :class:`CheckpointError` naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:  # safetensors, JSON, OS and DCP errors all mean the same here
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} cannot be read ({reason})") from err


def read_json(path: Path) -> Any:
    with reading(path):
        return json.loads(path.read_text())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with reading(path):
        return load_file(str(path))


def save_tree(directory: Path, name: str, obj: Any) -> None:
    """``obj`` as ``name.safetensors`` (its tensors) + ``name.json`` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(obj, tensors)
    write_tensors(directory / f"{name}.safetensors", tensors)
    write_json(directory / f"{name}.json", tree)


def load_tree(directory: Path, name: str) -> Any:
    """Inverse of :func:`save_tree`."""
    tensors = read_tensors(directory / f"{name}.safetensors")
    return decode(read_json(directory / f"{name}.json"), tensors)


def file_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``directory`` but
    ``state.json`` (which holds the manifest)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != STATE_NAME)
    return {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    }


def verify_files(directory: Path, manifest: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`CheckpointError` naming the first file of ``manifest`` that is missing or
    whose size or sha256 differs from the one recorded at save."""
    for name, want in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, {want['bytes']} were saved")
        if sha256_file(path) != want["sha256"]:
            raise CheckpointError(f"{path} differs from the saved file (sha256)")


# ---------------------------------------------------------------------------------------------
# RNG states (one rank's)


def rng_state() -> dict[str, Any]:
    """Torch CPU (and this rank's CUDA device), python ``random`` and numpy generator states."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`, on this rank's CUDA device."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # format 1: every visible device's state
        cuda = cuda[torch.cuda.current_device()] if torch.cuda.is_available() else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`rng_state` output -> JSON-able tree (torch generator states as base64)."""
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
