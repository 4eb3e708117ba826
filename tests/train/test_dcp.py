"""The ``dcp`` checkpoint format in one process, its pure helpers, init_from and export.

The 2-rank FSDP2 <-> 1-rank resumes are in ``test_dcp_dist.py``.
"""

import copy
import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openvision3.cli import main
from openvision3.configs import get_preset
from openvision3.distributed.parallelize import resolve_parallel
from openvision3.ov3.config import OV3StageConfig, TrainConfig, peak_lr
from openvision3.train.checkpoint import (
    find_latest,
    load_checkpoint,
    rng_from_json,
    rng_state,
    rng_to_json,
    save_checkpoint,
)
from openvision3.train.trainer import Trainer, data_position
from tests.train.test_checkpoint import _assert_same, _draws, _setup, _train


def test_dcp_round_trip_is_exact(tmp_path):
    """Same contract as the single format: state, RNG and the next steps are restored."""
    model, opt, sched, ema = _setup()
    _train(model, opt, sched, ema, 3)
    state = {"samples_seen": 36, "data": {"epoch": 0, "samples": 5}}
    path = save_checkpoint(tmp_path, 3, model, opt, sched, ema, state=state, format="dcp")
    saved = copy.deepcopy(
        (model.state_dict(), opt.state_dict(), sched.state_dict(), ema.state_dict())
    )
    draws = _draws()
    _train(model, opt, sched, ema, 2)
    reference = copy.deepcopy(model.state_dict())

    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    model2, opt2, sched2, ema2 = _setup()
    assert load_checkpoint(path, model2, opt2, sched2, ema2) == {"step": 3, **state}
    _assert_same(model2.state_dict(), saved[0])
    _assert_same(opt2.state_dict(), saved[1])
    _assert_same(sched2.state_dict(), saved[2])
    _assert_same(ema2.state_dict(), saved[3])
    draws2 = _draws()
    assert torch.equal(draws[0], draws2[0]) and draws[1] == draws2[1]
    assert np.array_equal(draws[2], draws2[2])
    _train(model2, opt2, sched2, ema2, 2)
    _assert_same(model2.state_dict(), reference)


def test_dcp_layout_holds_tensors_and_json(tmp_path):
    model, opt, sched, ema = _setup()
    _train(model, opt, sched, ema, 1)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, ema, format="dcp")
    assert {p.name for p in path.iterdir()} == {
        ".metadata",
        "__0_0.distcp",
        "optimizer.json",
        "state.json",
    }
    meta = json.loads((path / "state.json").read_text())
    assert meta["format"] == "dcp" and meta["world_size"] == 1 and len(meta["rng"]) == 1
    assert meta["ema"] == {"num_updates": 1, "decay": 0.9}
    groups = json.loads((path / "optimizer.json").read_text())["param_groups"]
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert not list(tmp_path.glob("checkpoints/*.tmp-*"))
    no_ema = save_checkpoint(tmp_path, 2, model, opt, format="dcp")
    model2, opt2, _, ema2 = _setup()
    with pytest.raises(FileNotFoundError, match="EMA"):
        load_checkpoint(no_ema, model2, opt2, ema=ema2)


def test_rng_json_round_trip():
    state = rng_state()
    back = rng_from_json(json.loads(json.dumps(rng_to_json(state))))
    _assert_same(back, state)


def test_data_position_across_world_sizes():
    pos = lambda s: {"epoch": 1, "samples": s, "skipped": 0}  # noqa: E731
    two = {"data": pos(8), "data_ranks": [pos(8), pos(8)]}
    assert data_position(two, 1, 2) == pos(8)  # same world: the rank's own
    assert data_position(two, 0, 1) == pos(16)  # 2 ranks x 8 = 16 samples of the epoch
    assert data_position(two, 3, 4) == pos(4)
    assert data_position({"data": pos(6)}, 0, 1) == pos(6)  # older checkpoints: rank 0's
    with pytest.raises(ValueError, match="evenly"):
        data_position({"data_ranks": [pos(3)]}, 0, 2)
    stream = {"workers": [[0, 4]], "next_worker": 0, "epoch": 0, "samples": 4}
    assert data_position({"data_ranks": [stream, stream]}, 0, 1) is None  # restarts, warns
    assert data_position({"data_ranks": [None]}, 0, 2) is None


def test_parallel_and_format_options_are_validated():
    assert resolve_parallel("auto", 1) == "none" and resolve_parallel("fsdp", 1) == "none"
    assert resolve_parallel("auto", 8) == "ddp" and resolve_parallel("fsdp", 8) == "fsdp"
    with pytest.raises(ValueError):
        resolve_parallel("zero3", 2)
    with pytest.raises(ValueError, match="train.parallel"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="train.ckpt_format"):
        TrainConfig(ckpt_format="safetensors")


def _smoke(run_dir, **train):
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run_dir)
    cfg.train.stages = [
        OV3StageConfig(resolution=32, steps=4, batch_size=4, lr=peak_lr(0.05, 4), warmup_steps=1)
    ]
    cfg.train.ckpt_every, cfg.train.log_every = 2, 1
    cfg.train.ckpt_format, cfg.train.ema_decay = "dcp", 0.9
    cfg.train.activation_checkpointing = True  # wrapper names must not reach checkpoints
    cfg.eval.num_images = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_trainer_dcp_resume_export_and_init_from(tmp_path):
    full = Trainer(_smoke(tmp_path / "full"))
    full.fit()
    assert Trainer(_smoke(tmp_path / "split", stop_at=2)).fit() == {"stopped_at": 2}
    second = Trainer(_smoke(tmp_path / "split"))
    assert second.step == 2 and second.samples == 8
    second.fit()
    a, b = full.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # 2 + 2 steps == 4 steps
    assert all(torch.equal(full.ema.params[k], second.ema.params[k]) for k in full.ema.params)
    ckpt = find_latest(tmp_path / "split")
    assert json.loads((ckpt / "state.json").read_text())["format"] == "dcp"
    # `ov3 export` of the DCP checkpoint == the trainer's own export (EMA weights) ...
    final = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[k], final[k]) for k in final)
    assert "_checkpoint_wrapped_module" not in " ".join(exported)
    # ... and the live weights on request; init_from reads a DCP checkpoint too.
    assert (
        main(["export", str(tmp_path / "split"), str(tmp_path / "live"), "--weights", "live"]) == 0
    )
    live = load_file(str(tmp_path / "live" / "model.safetensors"))
    assert all(torch.equal(live[k], b[k]) for k in live)
    assert not torch.equal(live["encoder.norm.weight"], final["encoder.norm.weight"])
    init = Trainer(_smoke(tmp_path / "init", init_from=str(ckpt), activation_checkpointing=False))
    sd = init.model.state_dict()
    assert all(torch.equal(sd[k], b[k]) for k in b)
