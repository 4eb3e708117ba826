"""parallelize() in one process: activation checkpointing and compile wrap every block of every
tower in the documented order and leave the loss, the gradients and the state-dict names as they
were. (2-rank DDP / FSDP2 parity: test_parallel_parity.py, marked dist.)"""

import copy

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from openvision3.distributed.parallelize import block_units, blocks, is_sharded, parallelize
from openvision3.losses.objective import Objective
from openvision3.train.checkpoint import model_state_dict
from tests.distributed.test_parallel_parity import _batch, _cfg, _model, _step


def test_one_process_wraps_every_block_and_changes_nothing_else():
    cfg = _cfg()
    model = _model(cfg)
    ref = copy.deepcopy(model)
    n = len(blocks(model))
    assert n == 8  # ov3-mu: 2 blocks in each of encoder, decoder, text, caption decoder
    out = parallelize(
        model,
        1,
        torch.device("cpu"),
        compile=True,
        parallel="fsdp",  # one process: no data parallelism whatever the mode
        activation_checkpointing=True,
        compile_backend="eager",
    )
    assert out is model and not is_sharded(model)
    units = block_units(model)
    assert len(units) == n and len(blocks(model)) == n
    # AC innermost, compile around it: OptimizedModule(CheckpointWrapper(Block)).
    assert all(isinstance(u._orig_mod, CheckpointWrapper) for u in units)
    assert "encoder.blocks.0._orig_mod._checkpoint_wrapped_module.attn.qkv.weight" in dict(
        model.named_parameters()
    )
    assert model_state_dict(model).keys() == ref.state_dict().keys()
    objective = Objective(cfg.objective)
    got, want = _step(model, model, objective, _batch()), _step(ref, ref, objective, _batch())
    torch.testing.assert_close(got["loss"], want["loss"])
    for k, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][k], g, rtol=1e-5, atol=1e-7, msg=k)
