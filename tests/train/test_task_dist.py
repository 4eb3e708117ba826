"""The toy task (``toy_task.py``) on 2 gloo ranks, DDP and FSDP2, through the real trainer:
the same run as one process on the same global batch (fp32; the ranks' batches interleave to
the one-process batch), exact resume on 2 ranks, and a frozen module that stays bit-unchanged.

Each run: 4 steps with EMA, gradient accumulation (2 micro-batches of 2 per rank) and clipping,
the first ``ToyBlock`` frozen, stopped after 2 steps and resumed. FSDP2 runs with activation
checkpointing and DCP checkpoints.
"""

import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from openvision3.cli import main
from openvision3.train.checkpoint import find_latest, read_meta
from openvision3.train.metrics import read_metrics
from openvision3.train.optim import OptimConfig
from openvision3.train.trainer import Trainer
from tests.dist_utils import free_port, worker_env
from tests.train.test_dcp_dist import assert_same, full_state
from tests.train.test_task import FROZEN, TOY_OPTIM, initial_weights, stage, toy

CLIP = 0.05  # below the gradient norms: clipping is active (FSDP2 clips with the global norm)
MODES = {  # name: the run's train settings
    "ddp": {"parallel": "ddp"},
    "fsdp": {"parallel": "fsdp", "ckpt_format": "dcp", "activation_checkpointing": True},
}


def _cfg(run_dir, **train):
    stages = [stage(4, warmup_steps=2, freeze=(FROZEN,))]
    optim = OptimConfig(**TOY_OPTIM, grad_clip=CLIP)
    return toy(run_dir, *stages, ema_decay=0.9, accum_steps=2, optim=optim, **train)


def _worker(rank, world, port, root):
    worker_env(rank, world, port)
    out = {}
    for mode, train in MODES.items():
        run = os.path.join(root, mode)
        first = Trainer(_cfg(run, stop_at=2, **train))
        assert first.parallel == mode
        assert first.fit() == {"stopped_at": 2}
        stopped = full_state(first)
        second = Trainer(_cfg(run, **train))  # resumes the 2-rank checkpoint
        resumed = full_state(second)
        second.fit()
        out[mode] = {"stopped": stopped, "resumed": resumed, "end": full_state(second)}
    if rank == 0:
        torch.save(out, os.path.join(root, "two.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_ddp_and_fsdp_match_one_process_resume_and_keep_frozen(tmp_path):
    one = Trainer(_cfg(tmp_path / "one"))
    one.fit()
    ref = full_state(one)
    assert all(r["grad_norm"] > 2 * CLIP for r in read_metrics(tmp_path / "one") if "loss" in r)
    init = initial_weights(_cfg(tmp_path / "one"))
    frozen = [k for k in init if k.startswith(FROZEN + ".")]
    assert frozen and all(torch.equal(ref["model"][k], init[k]) for k in frozen)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    for mode, r in two.items():
        assert r["stopped"]["data"] == {"samples": 8, "skipped": 0}, mode  # 8 of 16 per rank
        assert_same(r["resumed"], r["stopped"], mode)  # exact resume on 2 ranks
        end = r["end"]
        assert (end["step"], end["samples"], end["data"]) == (4, 32, {"samples": 16, "skipped": 0})
        assert end["model"].keys() == ref["model"].keys() and end["ema"].keys() == ref["ema"].keys()
        for part in ("model", "ema"):
            for k, v in ref[part].items():
                torch.testing.assert_close(end[part][k], v, rtol=1e-5, atol=1e-6, msg=f"{mode} {k}")
        assert all(torch.equal(end["model"][k], init[k]) for k in frozen), mode
        assert all(not torch.equal(end["model"][k], init[k]) for k in init if k not in frozen)
        final = load_file(str(tmp_path / mode / "final" / "model.safetensors"))
        assert all(torch.equal(final[k], end["ema"].get(k, init[k])) for k in final), mode
    # The sharded checkpoint exports in one process through the task registry (live weights:
    # the EMA export of a DCP checkpoint with a frozen module fails, see test_task.py).
    ckpt = find_latest(tmp_path / "fsdp")
    assert read_meta(ckpt)["format"] == "dcp"
    assert main(["export", str(ckpt), str(tmp_path / "export"), "--weights", "live"]) == 0
    assert_same(
        load_file(str(tmp_path / "export" / "model.safetensors")), two["fsdp"]["end"]["model"]
    )
