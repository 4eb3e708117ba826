"""Apply parallelism, activation checkpointing and compilation to a model from the outside.

The model files know nothing of this module. A model declares its repeated blocks by class
name in ``_no_split_modules`` (Hugging Face's convention, which transformers models already
follow; ``OpenVision3`` names ``Block``, the transformer block of every tower), and each such
block (an ``nn.Module`` with a ``forward``) is the unit everything
below is applied to: OpenVision 3's towers, a diffusion transformer's blocks, a language
model's decoder layers alike.

Order (torchtitan's), each step wrapping the block in its slot of the parent ``ModuleList``:

1. activation checkpointing per block: ``checkpoint_wrapper`` (non-reentrant), so the block's
   activations are recomputed in the backward pass;
2. ``torch.compile`` per block (on the checkpointed block, so the recomputation is compiled
   too; one graph per block shape, reused by every block of a tower);
3. ``fully_shard`` per block (FSDP2), on the compiled wrapper, so FSDP's all-gather /
   reduce-scatter hooks stay outside the compiled graph;
4. ``fully_shard`` of the root: the remaining parameters (patch embedding, norms, heads,
   token embeddings, ``logit_scale``) form one group. The frozen VAE is passed as
   ``ignored_params``: it has no trainable parameter, stays whole on every rank and never
   enters a state dict (see ``models/vae.py``).
   With DDP instead of FSDP2, step 4 is the ``DistributedDataParallel`` wrapper (it skips the
   frozen VAE because nothing there requires a gradient).

Wrapper names (``_checkpoint_wrapped_module``, ``_orig_mod``) appear in ``named_parameters``;
checkpoints never see them (``torch.distributed.checkpoint.state_dict`` and
``train.checkpoint.clean_key`` strip them).

Mixed precision under FSDP2 follows the trainer's precision: with bf16,
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` (sharded fp32 master weights,
bf16 compute copies, fp32 gradient reduction); the root does not cast its inputs, so images
reach the frozen VAE in fp32 and bf16 compute comes from the trainer's autocast. With fp32
(CPU, tests) there is no policy.

A single process (no process group) gets steps 1-2 only: the model itself is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from openvision3.distributed.process import get_world_size
from openvision3.wrappers import WRAPPER_ATTRS

PARALLEL_MODES = ("auto", "ddp", "fsdp")


def resolve_parallel(parallel: str, world_size: int) -> str:
    """``"none"`` for one process, else the data-parallel mode (``auto`` = DDP: the paper's
    model sizes fit one GPU, and DDP needs no gather for evaluation or export)."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    if world_size <= 1:
        return "none"
    return "ddp" if parallel == "auto" else parallel


def block_names(model: nn.Module) -> set[str]:
    """The class names that ``model`` declares in ``_no_split_modules`` (the root's own list:
    a frozen part's declaration, such as diffusers' VAE blocks, is not the trainer's unit)."""
    names = set(getattr(_inner(model), "_no_split_modules", None) or ())
    if not names:
        raise ValueError(
            f"{type(model).__name__} declares no repeated blocks: set _no_split_modules to the "
            "class names of its blocks (the unit of activation checkpointing, compile and FSDP2)"
        )
    return names


def blocks(model: nn.Module) -> list[nn.Module]:
    """Every declared block (the unit for compile / checkpointing / sharding)."""
    names = block_names(model)
    return [m for m in model.modules() if type(m).__name__ in names]


def _inner(module: nn.Module) -> nn.Module:
    """The module under the compile / activation-checkpoint wrappers."""
    for attr in WRAPPER_ATTRS:
        module = getattr(module, attr, module)
    return module


def _block_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, name) of every block's outermost module (the block or its wrapper)."""
    names = block_names(model)
    return [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if name not in WRAPPER_ATTRS and type(_inner(child)).__name__ in names
    ]


def _rewrap(model: nn.Module, fn) -> None:
    """Replace every block's outermost module by ``fn(module)`` in its parent."""
    for parent, name in _block_slots(model):
        parent.register_module(name, fn(parent.get_submodule(name)))


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every block in a non-reentrant activation-checkpoint wrapper, in place."""
    _rewrap(model, checkpoint_wrapper)


def compile_blocks(model: nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` every block (checkpointed or not) in its slot. Shapes change between
    stages; ``dynamic=False`` recompiles once per shape instead of tracing symbolic sizes."""
    _rewrap(model, lambda m: torch.compile(m, backend=backend, dynamic=False))


def block_units(model: nn.Module) -> list[nn.Module]:
    """The outermost module of every block: what ``fully_shard`` is applied to."""
    return [parent.get_submodule(name) for parent, name in _block_slots(model)]


def frozen_params(model: nn.Module) -> set[nn.Parameter]:
    """Frozen parameters outside the blocks (a frozen VAE): kept out of FSDP's sharding. Frozen
    blocks are sharded like the others (gathered for the forward, no gradient)."""
    in_blocks = {id(p) for unit in block_units(model) for p in unit.parameters()}
    return {p for p in model.parameters() if not p.requires_grad and id(p) not in in_blocks}


def apply_fsdp(model: nn.Module, device: torch.device, param_dtype: torch.dtype) -> None:
    """FSDP2 in place: ``fully_shard`` per block, then the root (frozen parameters ignored)."""
    mesh = init_device_mesh(device.type, (get_world_size(),))
    if param_dtype == torch.float32:
        block_mp = root_mp = MixedPrecisionPolicy()
    else:
        block_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        root_mp = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    for unit in block_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=block_mp)
    fully_shard(model, mesh=mesh, mp_policy=root_mp, ignored_params=frozen_params(model))


def parallelize(
    model: nn.Module,
    world_size: int,
    device: torch.device,
    compile: bool = False,
    *,
    parallel: str = "auto",
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype = torch.float32,
    compile_backend: str = "inductor",
) -> nn.Module:
    """Apply AC -> compile -> data parallelism (module docstring); returns the module to call
    in the training step: the model itself (one process, or FSDP2, which shards in place) or
    its DDP wrapper. Build the optimizer *after* this call: FSDP2 replaces the parameters by
    sharded ``DTensor``s.

    ``find_unused_parameters`` stays False: the trainer only builds heads whose loss weight is
    non-zero, so every trainable parameter receives a gradient each step.
    """
    mode = resolve_parallel(parallel, world_size)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        compile_blocks(model, compile_backend)
    if mode == "fsdp":
        apply_fsdp(model, device, param_dtype)
        return model
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 has sharded ``model`` (its parameters are ``DTensor``s)."""
    return isinstance(model, FSDPModule) or any(isinstance(p, DTensor) for p in model.parameters())


def unsharded_copy(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A plain (unsharded, unwrapped) replica of an FSDP2-sharded model on every rank.

    Collective: every rank all-gathers the full state dict into ``build()`` (a fresh model of
    the same architecture; the trainer passes its task's ``build_model``, which shares frozen
    parts such as the VAE instead of copying them). Used for evaluation and export, whose
    methods (``embed_image``, ``reconstruct``, ``caption_ids``) bypass the root ``forward``
    that FSDP2 hooks to unshard the root's parameters. The global RNG is left untouched
    (building draws initial weights), so evaluating mid-run does not change the training noise.
    """
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    device = next(iter(full.values())).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        copy = build()
    copy.load_state_dict(full, strict=True)
    return copy


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over plain or FSDP2-sharded gradients; returns the
    total norm (over the whole model, before clipping) as a plain () tensor on every rank.

    With ``DTensor`` gradients torch computes the per-shard norms and reduces them across the
    mesh, so every rank clips with the same global coefficient.
    """
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
