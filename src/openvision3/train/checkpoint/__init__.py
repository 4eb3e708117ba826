"""Training checkpoints: tensors and JSON, no pickled Python objects of ours.

Two formats behind the same functions (:func:`save_checkpoint`, :func:`load_checkpoint`,
:func:`resume`, all called on every rank): ``single`` (``single.py``: rank 0 writes plain state
dicts; one process, DDP) and ``dcp`` (``dcp.py``: every rank writes its shards with
``torch.distributed.checkpoint``; FSDP2, and a checkpoint saved on N ranks loads on M). Both
use ``codec.py`` (names, the tensors + JSON codec, RNG states, the file manifest); ``store.py``
writes, verifies, finds and loads checkpoint directories.
"""

from openvision3.train.checkpoint.codec import (
    clean_key,
    decode,
    encode,
    load_model_state_dict,
    model_state_dict,
    rng_from_json,
    rng_state,
    rng_to_json,
    set_rng_state,
)
from openvision3.train.checkpoint.store import (
    FORMAT_VERSION,
    RESUME_CHOICES,
    checkpoint_dir,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    read_meta,
    resume,
    save_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "RESUME_CHOICES",
    "checkpoint_dir",
    "clean_key",
    "decode",
    "encode",
    "find_latest",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_state_dict",
    "load_weights",
    "model_state_dict",
    "read_meta",
    "resume",
    "rng_from_json",
    "rng_state",
    "rng_to_json",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]
