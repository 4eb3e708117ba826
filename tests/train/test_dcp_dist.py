"""DCP checkpoints across world sizes with the real trainer (2 gloo ranks, FSDP2, ov3-mu):
saved on 2 FSDP ranks -> resumed on 1 process, and saved on 1 -> resumed on 2, with identical
parameters, optimizer state, EMA and data position; export from the sharded checkpoint."""

import copy
import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.tensor import DTensor

from openvision3.cli import main
from openvision3.train.checkpoint import find_latest
from openvision3.train.trainer import Trainer
from tests.dist_utils import free_port, worker_env
from tests.train.test_dcp import _smoke


def _cfg(run_dir, **train):
    """test_dcp's smoke run (dcp checkpoints, EMA) sharded with FSDP2, no activation
    checkpointing."""
    return _smoke(run_dir, **{"parallel": "fsdp", "activation_checkpointing": False, **train})


def full_state(trainer: Trainer) -> dict:
    """Full (gathered) model, optimizer (keyed by name) and EMA, on CPU, copied (CPU tensors
    may be the live ones); collective."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model, optim = copy.deepcopy(get_state_dict(trainer.model, trainer.optimizer, options=opts))
    ema = {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu().clone()
        for k, v in trainer.ema.params.items()
    }
    return {
        "model": model,
        "optim": optim,
        "ema": ema,
        "ema_updates": trainer.ema.num_updates,
        "step": trainer.step,
        "samples": trainer.samples,
        "data": trainer.data_state,
    }


def assert_same(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _save_on_two(rank, world, port, run_dir, out):
    worker_env(rank, world, port)
    trainer = Trainer(_cfg(run_dir, stop_at=2))
    assert trainer.fit() == {"stopped_at": 2}
    state = full_state(trainer)
    if rank == 0:
        torch.save(state, os.path.join(out, "two.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_fsdp_checkpoint_resumes_on_one_process_and_exports(tmp_path):
    run = tmp_path / "run"
    mp.spawn(_save_on_two, args=(2, free_port(), str(run), str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    ckpt = find_latest(run)
    assert sorted(p.name for p in ckpt.glob("__*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    one = Trainer(_cfg(run))  # 1 process, same run directory: resumes the 2-rank checkpoint
    assert one.parallel == "none"
    state = full_state(one)
    # Per-rank position 4 of 2 ranks == position 8 of one rank in the same epoch.
    assert two["data"] == {"epoch": 0, "samples": 4, "skipped": 0}
    assert state.pop("data") == {"epoch": 0, "samples": 8, "skipped": 0}
    two.pop("data")
    assert_same(state, two)
    moved = one.model.state_dict()["encoder.norm.weight"]
    assert not torch.equal(moved, torch.ones_like(moved))  # trained weights, not the init
    # Export of the sharded checkpoint == the gathered EMA / live weights.
    assert main(["export", str(ckpt), str(tmp_path / "ema")]) == 0
    assert main(["export", str(ckpt), str(tmp_path / "live"), "--weights", "live"]) == 0
    for name, ref in (("ema", two["ema"]), ("live", two["model"])):
        exported = load_file(str(tmp_path / name / "model.safetensors"))
        assert set(exported) >= set(ref) and set(exported) == set(two["model"])
        assert all(torch.equal(exported[k], ref[k]) for k in ref), name


def _resume_on_two(rank, world, port, run_dir, out):
    worker_env(rank, world, port)
    trainer = Trainer(_cfg(run_dir))
    resumed = full_state(trainer)
    trainer.fit()  # to the end: FSDP2 export (run_dir/final) and evaluation
    end = full_state(trainer)
    if rank == 0:
        torch.save({"resumed": resumed, "end": end}, os.path.join(out, "two.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_one_process_checkpoint_resumes_on_two_fsdp_ranks(tmp_path):
    run = tmp_path / "run"
    one = Trainer(_cfg(run, stop_at=2))
    assert one.fit() == {"stopped_at": 2}
    saved = full_state(one)
    mp.spawn(_resume_on_two, args=(2, free_port(), str(run), str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    resumed = two["resumed"]
    assert saved.pop("data") == {"epoch": 0, "samples": 8, "skipped": 0}
    assert resumed.pop("data") == {"epoch": 0, "samples": 4, "skipped": 0}
    assert_same(resumed, saved)
    # The 2-rank run finished: its export holds the gathered EMA weights.
    end = two["end"]
    assert end["step"] == 4 and end["samples"] == 16
    final = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], end["ema"][k]) for k in end["ema"])
    assert (run / "results.json").is_file()
