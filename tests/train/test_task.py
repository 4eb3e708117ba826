"""The engine serves a second task unchanged (``toy_task.py``, registered from the tests):
it learns, checkpoints, exports through the registry, resumes exactly and freezes by name.

The 2-process DDP / FSDP2 runs of the same task are in ``test_task_dist.py``.
"""

import json

import torch
from safetensors.torch import load_file

from openvision3.cli import main
from openvision3.dataclass_io import from_dict
from openvision3.train.checkpoint import list_checkpoints, read_meta
from openvision3.train.config import StageConfig, TrainConfig
from openvision3.train.export import export_checkpoint
from openvision3.train.metrics import read_metrics
from openvision3.train.optim import OptimConfig
from openvision3.train.task import config_class
from openvision3.train.trainer import Trainer
from tests.train.toy_task import ToyConfig, ToyRegressor

FROZEN = "blocks.0"  # the first ToyBlock: a module name, and a whole FSDP2 unit


# The toy's AdamW: betas (0.9, 0.95), weight decay 0.2 (not AdamW's own defaults).
TOY_OPTIM = {"betas": (0.9, 0.95), "weight_decay": 0.2}


def stage(steps: int, lr: float = 1e-2, batch: int = 8, **kw) -> StageConfig:
    """A stage of peak LR ``lr``."""
    return StageConfig(steps=steps, batch_size=batch, lr=lr, **kw)


def toy(run_dir, *stages: StageConfig, dropout: float = 0.0, **train) -> ToyConfig:
    tc = TrainConfig(
        stages=list(stages) or [stage(4, warmup_steps=2)],
        **{"device": "cpu", "log_every": 1, "ckpt_every": 2, "optim": OptimConfig(**TOY_OPTIM),
           **train},
    )  # fmt: skip
    return ToyConfig(name="toy", run_dir=str(run_dir), dropout=dropout, train=tc)


def initial_weights(cfg: ToyConfig) -> dict[str, torch.Tensor]:
    """The weights a run of ``cfg`` starts from (the engine seeds before ``build_model``)."""
    torch.manual_seed(cfg.train.seed)
    return ToyRegressor(cfg).state_dict()


def params(trainer: Trainer, names=None) -> dict[str, torch.Tensor]:
    sd = trainer.model.state_dict()
    return {k: v.clone() for k, v in sd.items() if names is None or k.startswith(names)}


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_trains_checkpoints_and_exports_through_the_registry(tmp_path):
    run = tmp_path / "run"
    cfg = toy(run, stage(40, batch=16, warmup_steps=2), ema_decay=0.9, ckpt_every=20)
    cfg.train.activation_checkpointing = True  # the declared blocks are wrapped in place
    trainer = Trainer(cfg)
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 40
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5]), losses  # the target is learnt

    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000020", "step_00000040"]
    assert read_meta(ckpts[-1])["state"]["task"] == "toy-regression"
    assert config_class("toy-regression") is ToyConfig

    # `ov3 export` rebuilds the model from the checkpoint through the registry.
    assert main(["export", str(run), str(tmp_path / "ema")]) == 0
    assert main(["export", str(run), str(tmp_path / "live"), "--weights", "live"]) == 0
    ema, live = (load_file(str(tmp_path / w / "model.safetensors")) for w in ("ema", "live"))
    assert_equal(live, params(trainer))  # clean names: no activation-checkpoint wrapper part
    assert_equal(ema, {k: v.cpu() for k, v in trainer.ema.params.items()})
    assert_equal(ema, load_file(str(run / "final" / "model.safetensors")))
    assert not torch.equal(ema["head.weight"], live["head.weight"])
    meta = json.loads((tmp_path / "ema" / "config.json").read_text())
    assert meta["card"]["steps"] == 40 and meta["card"]["weights"] == "ema"
    rebuilt_cfg = from_dict(config_class(meta["task"]), meta["config"])
    assert rebuilt_cfg == cfg
    ToyRegressor(rebuilt_cfg).load_state_dict(ema, strict=True)


def test_two_plus_two_steps_equal_four(tmp_path):
    """Weights, EMA, optimizer, data position and the dropout stream carry over a stop."""
    run = lambda d, **kw: toy(d, dropout=0.1, ema_decay=0.9, accum_steps=2, **kw)  # noqa: E731
    full = Trainer(run(tmp_path / "full"))
    full.fit()
    first = Trainer(run(tmp_path / "split", stop_at=2))
    assert first.fit() == {"stopped_at": 2}
    second = Trainer(run(tmp_path / "split"))
    assert (second.step, second.samples, second.data_state) == (
        2,
        16,
        {"samples": 16, "skipped": 0},
    )
    second.fit()
    assert_equal(params(second), params(full))
    assert_equal(second.ema.params, full.ema.params)
    assert full.data_state == second.data_state == {"samples": 32, "skipped": 0}
    for a, b in zip(full.model.parameters(), second.model.parameters()):
        assert_equal(second.optimizer.state[b], full.optimizer.state[a])
        assert full.optimizer.state[a]["step"] == 4
    moved = initial_weights(run(tmp_path / "x"))["blocks.1.fc.weight"]
    assert not torch.equal(moved, params(full)["blocks.1.fc.weight"])


def test_a_module_frozen_in_every_stage_stays_and_leaves_the_optimizer(tmp_path):
    cfg = toy(tmp_path, stage(3, freeze=(FROZEN,)), ema_decay=0.9)
    init = initial_weights(cfg)
    trainer = Trainer(cfg)
    trainer.fit()
    after = params(trainer)
    frozen = [k for k in after if k.startswith(FROZEN + ".")]
    assert frozen == [f"{FROZEN}.{n}" for n in ("norm.weight", "norm.bias", "fc.weight", "fc.bias")]
    assert all(torch.equal(after[k], init[k]) for k in frozen)
    assert all(not torch.equal(after[k], init[k]) for k in after if k not in frozen)
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert all(id(named[k]) not in optimised for k in frozen)
    assert len(trainer.optimizer.state) == len(named) - len(frozen)
    assert set(trainer.ema.params) == set(named) - set(frozen)
    exported = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(torch.equal(exported[k], init[k]) for k in frozen)


def test_a_module_frozen_in_stage_0_trains_in_stage_1(tmp_path):
    cfg = lambda **kw: toy(tmp_path, stage(2, freeze=(FROZEN,)), stage(2), **kw)  # noqa: E731
    init = initial_weights(cfg())
    first = Trainer(cfg(stop_at=2))  # stops (and checkpoints) at the end of stage 0
    assert first.fit() == {"stopped_at": 2}
    named = dict(first.model.named_parameters())
    frozen = [k for k in named if k.startswith(FROZEN + ".")]
    assert frozen and all(torch.equal(named[k], init[k]) for k in frozen)
    assert all(not first.optimizer.state.get(named[k]) for k in frozen)  # no moments, no decay
    assert all(not torch.equal(p, init[k]) for k, p in named.items() if k not in frozen)
    second = Trainer(cfg())
    second.fit()
    named = dict(second.model.named_parameters())
    assert all(not torch.equal(named[k], init[k]) for k in frozen)
    assert all(second.optimizer.state[named[k]]["step"] == 2 for k in frozen)
    assert all(second.optimizer.state[named[k]]["step"] == 4 for k in named if k not in frozen)


def test_per_stage_freezing_with_ema(tmp_path):
    """A module frozen in stage 0 keeps its EMA shadow (equal to its unchanged weights) and
    is averaged again once stage 1 trains it."""
    trainer = Trainer(toy(tmp_path, stage(2, freeze=(FROZEN,)), stage(2), ema_decay=0.9))
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    frozen = [k for k in init if k.startswith(FROZEN + ".")]
    trainer.cfg.train.stop_at = 2
    trainer.fit()
    assert all(torch.equal(trainer.ema.params[k], init[k].float()) for k in frozen)
    second = Trainer(toy(tmp_path, stage(2, freeze=(FROZEN,)), stage(2), ema_decay=0.9))
    second.fit()
    assert all(not torch.equal(second.ema.params[k], init[k].float()) for k in frozen)


def test_ema_export_of_a_dcp_checkpoint_with_a_frozen_module(tmp_path):
    """The frozen module has no EMA shadow: the export takes it from the checkpoint's model."""
    trainer = Trainer(toy(tmp_path, stage(1, freeze=(FROZEN,)), ema_decay=0.9, ckpt_format="dcp"))
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    export_checkpoint(tmp_path, tmp_path / "export")
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    frozen = [k for k in init if k.startswith(FROZEN + ".")]
    assert frozen and all(torch.equal(exported[k], init[k]) for k in frozen)
    others = [k for k in init if k not in frozen]
    assert all(torch.equal(exported[k], trainer.ema.params[k].to(init[k].dtype)) for k in others)


def test_every_builtin_task_resolves_to_its_config_class():
    """A checkpoint of any of the package's tasks can be read back (``ov3 export``)."""
    from openvision3.train.task import _CONFIGS, config_class

    for name in list(_CONFIGS):
        cls = config_class(name)
        assert cls.TASK == name


def test_checkpoints_of_the_older_stage_layout_still_read(tmp_path):
    """Older configs: every stage held ``base_lr`` (peak = base x batch / 256) and OpenVision
    3's ``resolution`` / ``lpips_weight``, every run ``train.compile_vae``."""
    from openvision3.dataclass_io import to_dict
    from openvision3.train.task import config_from_checkpoint

    cfg = toy(tmp_path, stage(3, lr=1e-2, batch=16, warmup_steps=1))
    old = to_dict(cfg)
    (s,) = old["train"]["stages"]
    s["base_lr"] = s.pop("lr") * 256 / 16
    s.update(resolution=128, lpips_weight=None)
    old["train"].update(compile_vae=False, channels_last_vae=True)
    read = config_from_checkpoint({"task": ToyConfig.TASK, "config": old})
    assert read == cfg and read.train.stages[0].lr == 1e-2
