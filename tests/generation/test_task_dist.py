"""The generation task on 2 gloo ranks (DDP): the same run as one process on the same global
batch (the per-sample draws make the noise independent of the rank), and exact resume."""

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from openvision3.train.trainer import Trainer
from tests.dist_utils import free_port, worker_env
from tests.generation.test_task import smoke
from tests.train.test_dcp_dist import assert_same, full_state


def _cfg(root, cache, **train):
    cfg = smoke(root / "run", cache, accum_steps=2, **train)
    cfg.train.stages[0].batch_size = 8
    return cfg


def _worker(rank, world, port, root, cache):
    worker_env(rank, world, port)
    root = Path(root)
    first = Trainer(_cfg(root / "two", cache, stop_at=2, parallel="ddp"))
    assert first.fit() == {"stopped_at": 2}
    stopped = full_state(first)
    second = Trainer(_cfg(root / "two", cache, parallel="ddp"))
    resumed = full_state(second)
    second.fit()
    out = {"stopped": stopped, "resumed": resumed, "end": full_state(second)}
    if rank == 0:
        torch.save(out, os.path.join(root, "two.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_ddp_matches_one_process_and_resumes(tmp_path, token_cache):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = Trainer(_cfg(tmp_path / "one", token_cache))
    one.fit()
    ref = full_state(one)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), str(token_cache)), nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert_same(two["resumed"], two["stopped"], "resume on 2 ranks")
    end = two["end"]
    assert (end["step"], end["samples"]) == (4, 32)
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            torch.testing.assert_close(end[part][k], v, rtol=1e-5, atol=1e-6, msg=f"{part} {k}")
