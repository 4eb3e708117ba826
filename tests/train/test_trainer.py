"""The training engine on the smoke config: exact resume, stage switch, CLI, DDP, NaN stop."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from openvision3.cli import main
from openvision3.configs import get_preset
from openvision3.errors import ConfigError, TrainingDivergedError
from openvision3.ov3.config import ExperimentConfig, OV3StageConfig, peak_lr
from openvision3.train.checkpoint import find_latest
from openvision3.train.metrics import read_metrics
from openvision3.train.trainer import Trainer
from tests.dist_utils import free_port, worker_env


def smoke(run_dir, **train) -> ExperimentConfig:
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run_dir)
    cfg.train.stages = [
        OV3StageConfig(resolution=32, steps=2, batch_size=4, lr=peak_lr(0.05, 4), warmup_steps=1),
        OV3StageConfig(resolution=64, steps=2, batch_size=4, lr=peak_lr(0.05, 4), warmup_steps=1),
    ]
    cfg.train.ckpt_every, cfg.train.log_every = 2, 1
    cfg.eval.num_images = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def final_weights(run_dir):
    return load_file(str(find_latest(run_dir) / "model.safetensors"))


def test_exact_resume_across_stage_switch(tmp_path):
    full = Trainer(smoke(tmp_path / "full"))
    full.fit()
    first = Trainer(smoke(tmp_path / "split", stop_at=3))
    assert first.fit() == {"stopped_at": 3}
    assert not (tmp_path / "split" / "final").exists()
    second = Trainer(smoke(tmp_path / "split"))
    assert second.step == 3 and second.samples == 12
    second.fit()
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state = lambda d: json.loads((find_latest(d) / "state.json").read_text())["state"]  # noqa: E731
    assert state(tmp_path / "full")["data"] == state(tmp_path / "split")["data"]
    # the weights moved (the comparison is not between two untouched models)
    init = Trainer(smoke(tmp_path / "init", resume="none")).model.state_dict()
    assert not torch.equal(
        init["encoder.blocks.0.attn.qkv.weight"], a["encoder.blocks.0.attn.qkv.weight"]
    )


def test_stage_switch_changes_token_grid(tmp_path):
    trainer = Trainer(smoke(tmp_path))
    grids = []
    hook = trainer.model.encoder.register_forward_hook(lambda m, i, o: grids.append(o.shape[1]))
    trainer.fit()
    hook.remove()
    assert grids[:4] == [4, 4, 16, 16]  # 32 px -> 2x2 tokens, 64 px -> 4x4 tokens
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["resolution"] for r in rows] == [32, 32, 64, 64]
    assert [r["samples"] for r in rows] == [4, 8, 12, 16]


def test_non_finite_loss_stops_and_names_the_step(tmp_path, monkeypatch):
    trainer = Trainer(smoke(tmp_path))
    from openvision3.losses.objective import Objective

    original = Objective.forward

    def poisoned(self, out):
        total, terms = original(self, out)
        return (total * float("nan") if trainer.step == 2 else total), terms

    monkeypatch.setattr(Objective, "forward", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 2"):
        trainer.fit()


def test_cli_runs_smoke_config_end_to_end(tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", "demo_smoke", "--run-dir", str(run), "--train.stages.1.steps", "2"]) == 0
    cfg = ExperimentConfig.from_json((run / "config.json").read_text())
    assert cfg.train.stages[1].steps == 2 and cfg.name == "demo_smoke"
    results = json.loads((run / "results.json").read_text())
    assert {"zero_shot_top1", "retrieval_i2t_r1", "rec_psnr", "caption_bleu4"} <= set(
        results["metrics"]
    )
    assert (run / "final" / "model.safetensors").is_file()
    assert len([r for r in read_metrics(run) if "loss" in r]) == 5
    assert main(["train", "no_such_preset"]) == 2  # one line naming the presets, no traceback


def test_demo_command_writes_report(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", "demo_smoke", "--run-dir", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "## Learning checks" in report and "zero-shot top-1" in report
    assert "colour alone: 0.125" in report and "does not learn: shape" in report
    out = json.loads((run / "report.json").read_text())
    assert "captions name the main object's colour" in [c["check"] for c in out["checks"]]
    assert out["passed"] == all(c["passed"] for c in out["checks"])
    assert {"metrics", "references"} <= set(out)
    assert (run / "loss_curves.png").stat().st_size > 1000
    assert (run / "eval" / "reconstructions.png").is_file()


def _ddp_worker(rank, world, port, run_dir, out):
    worker_env(rank, world, port)
    cfg = smoke(run_dir)
    trainer = Trainer(cfg)
    trainer.fit()
    sd = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    torch.save(sd, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_two_process_ddp_smoke_run(tmp_path):
    port = free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the replicas identical
    saved = final_weights(tmp_path / "run")
    assert all(torch.equal(saved[k], r0[k]) for k in saved)
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(rows) == 4 and rows[-1]["samples"] == 16


def test_init_from_export_and_checkpoint(tmp_path):
    Trainer(smoke(tmp_path / "a")).fit()
    final = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    for source in (tmp_path / "a" / "final", find_latest(tmp_path / "a")):
        trainer = Trainer(smoke(tmp_path / f"b{len(str(source))}", init_from=str(source)))
        sd = trainer.model.state_dict()
        assert all(torch.equal(sd[k], final[k]) for k in final)
    with pytest.raises(ConfigError, match="--train.init-from"):
        Trainer(smoke(tmp_path / "c", init_from=str(tmp_path / "missing")))
