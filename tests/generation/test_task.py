"""The generation task on the engine: it trains and exports, resumes exactly (2 + 2 steps equal
4), keeps RAE's EMA (no warm-up), its draws do not depend on the batch split, and the export
samples through ``load_generator``-style loading."""

import json

import pytest
import torch

from openvision3.data.token_stats import load_token_stats
from openvision3.generation.presets import PRESETS
from openvision3.generation.task import GenerationConfig, sample_draws
from openvision3.train.trainer import Trainer
from tests.train.test_dcp_dist import assert_same, full_state


def smoke(run_dir, cache, **train) -> GenerationConfig:
    cfg = PRESETS["demo_generation_smoke"]()
    cfg.run_dir, cfg.data.cache, cfg.data.label_field = str(run_dir), str(cache), "small_label"
    cfg.data.stats = str(run_dir.parent / "stats.safetensors")
    cfg.model.num_classes = 5
    cfg.class_names = ["a", "b", "c", "d", "e"]
    cfg.train.stages[0].steps = 4
    cfg.train.ema_decay, cfg.train.ema_warmup = 0.9, False
    cfg.train.ckpt_every = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_trains_resumes_exactly_and_exports(tmp_path, token_cache):
    (tmp_path / "a").mkdir()
    one = Trainer(smoke(tmp_path / "a" / "run", token_cache))
    init = {k: v.clone() for k, v in one.model.state_dict().items()}
    one.fit()
    ref = full_state(one)
    (tmp_path / "b").mkdir()
    cfg = smoke(tmp_path / "b" / "run", token_cache, stop_at=2)
    cfg.data.stats = ref_stats = str(tmp_path / "a" / "stats.safetensors")
    assert Trainer(cfg).fit() == {"stopped_at": 2}
    cfg.train.stop_at = 0
    second = Trainer(cfg)
    assert second.step == 2
    second.fit()
    assert_same(full_state(second), ref)
    changed = [k for k, v in ref["model"].items() if not torch.equal(v, init[k])]
    # adaLN-Zero: the output layer learns first, then the head's blocks (their gates open).
    assert "final_layer.linear.weight" in changed and "blocks.2.attn.qkv.weight" in changed
    stats = load_token_stats(ref_stats)
    assert stats["mean"].shape == (16, 4, 4) and (stats["var"] > 0).all()
    meta = json.loads((tmp_path / "a" / "run" / "final" / "config.json").read_text())
    assert meta["task"] == "generation" and meta["config"]["class_names"][1] == "b"


def test_ema_has_no_warmup(tmp_path, token_cache):
    (tmp_path / "a").mkdir()
    cfg = smoke(tmp_path / "a" / "run", token_cache)
    cfg.train.stages[0].steps = 1
    trainer = Trainer(cfg)
    assert trainer.ema.current_decay() == 0.9
    init = {k: v.clone() for k, v in trainer.ema.params.items()}
    trainer.fit()
    w = dict(trainer.model.named_parameters())
    for k, v in trainer.ema.params.items():
        torch.testing.assert_close(v, 0.9 * init[k] + 0.1 * w[k].detach())


def test_draws_depend_only_on_the_sample_position():
    index = torch.arange(10, 16)
    t, noise, u = sample_draws(index, 3, (2, 2, 2), 1.5, "cpu")
    t2, noise2, u2 = sample_draws(index[3:], 3, (2, 2, 2), 1.5, "cpu")
    assert torch.equal(t[3:], t2) and torch.equal(noise[3:], noise2) and torch.equal(u[3:], u2)
    assert not torch.equal(sample_draws(index, 4, (2, 2, 2), 1.5, "cpu")[1], noise)
    assert ((t > 0) & (t < 1)).all() and ((u >= 0) & (u < 1)).all()


def test_rae_schedule_is_constant_then_linear_to_a_tenth():
    from openvision3.train.optim import multi_stage_schedule

    fn = multi_stage_schedule([(800, 2e-4, 0)], min_lr_ratio=0.1, decay="linear", hold_ratio=0.05)
    assert fn(0) == fn(39) == 2e-4  # constant for the first 5% (40 of 800 "epochs")
    assert fn(40) == 2e-4 and fn(420) == pytest.approx(2e-4 - 1.8e-4 * 380 / 760)
    assert fn(799) == pytest.approx(2e-5 + 1.8e-4 / 760) and fn(800) == fn(10_000) == 2e-5
    cfg = PRESETS["dit_dh_xl_ov3_b2"]()
    o, s = cfg.train.optim, cfg.train.stages[0]
    assert (o.decay, o.hold_ratio, o.min_lr_ratio, o.weight_decay) == ("linear", 0.05, 0.1, 0.0)
    assert s.lr == 2e-4 and s.batch_size == 1024
    assert (cfg.train.ema_decay, cfg.train.ema_warmup) == (0.9995, False)
