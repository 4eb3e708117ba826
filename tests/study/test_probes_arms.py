"""Probes do not reach the encoder; arms differ only in what they are meant to; equal budgets;
the pixel ViT keeps the token grid."""

import dataclasses

import pytest
import torch

from openvision3.data.loader import build_loader
from openvision3.losses.objective import Objective
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config, pixel_vit
from openvision3.study.arms import TRUNK, arm_run_config
from openvision3.study.studies import paper_small, paper_small_smoke


def _study():
    study = paper_small_smoke()
    study.run_dir = "unused"
    return study


def _batch(cfg, n=4):
    return next(iter(build_loader(cfg.data, "train", 32, n)))


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _trunk(name):
    return any(name.startswith(t) for t in TRUNK)


@pytest.mark.parametrize("arm", ["und-only", "rec-only", "frozen-init"])
def test_no_probe_gradient_reaches_the_encoder(arm):
    """Backpropagate the probes' losses alone: their heads get gradients, the encoder's trunk
    none; the trained branches' losses do reach it."""
    study = _study()
    cfg = arm_run_config(study, study.arm(arm), 0)
    model = OpenVision3(cfg.model)
    objective = Objective(cfg.objective)
    batch = _batch(cfg)
    out = model(batch, detach=cfg.objective.stop_gradient)
    _, terms = objective(out)
    probes = study.arm(arm).probes
    loss_of = {
        "reconstruction": lambda: objective.reconstruction(
            out["images"], out["images_hat"], out["latents"], out["latents_hat"]
        )[0],
        "contrastive": lambda: objective.contrastive(
            out["image_embeds"], out["text_embeds"], out["logit_scale"], out.get("text_embeds_2")
        ),
        "caption": lambda: torch.nn.functional.cross_entropy(
            out["caption_logits"].flatten(0, 1), out["caption_targets"].flatten(), ignore_index=0
        ),
    }
    probe_loss = sum(loss_of[b]() for b in probes)
    probe_loss.backward(retain_graph=True)
    grads = _grads(model)
    assert all(g is None or not g.abs().any() for n, g in grads.items() if _trunk(n)), (
        "a probe's gradient reached the encoder trunk"
    )
    head_of = {"reconstruction": "decoder.", "contrastive": "encoder.head", "caption": "captioner."}
    for b in probes:
        assert any(
            g is not None and g.abs().any() for n, g in grads.items() if n.startswith(head_of[b])
        )
    trained = study.arm(arm).trains
    if trained:
        model.zero_grad(set_to_none=True)
        sum(loss_of[b]() for b in trained).backward()
        assert any(g is not None and g.abs().any() for n, g in _grads(model).items() if _trunk(n))


def test_arms_share_budget_and_differ_only_by_design():
    study = paper_small()
    study.run_dir = "unused"
    for seed in study.seeds:
        cfgs = {a.name: arm_run_config(study, a, seed) for a in study.arms}
        ref = cfgs["both"]
        for name, cfg in cfgs.items():
            strip = lambda s: dataclasses.replace(s, freeze=())  # noqa: E731
            assert [strip(s) for s in cfg.train.stages] == [strip(s) for s in ref.train.stages]
            assert cfg.train.optim == ref.train.optim and cfg.train.seed == seed
            assert cfg.data == ref.data
            assert cfg.probe_eval == ref.probe_eval and cfg.train.eval_every == study.eval.every
            assert cfg.model.text == ref.model.text and cfg.model.caption == ref.model.caption
            assert cfg.objective.rec_weight == 0.5 and cfg.objective.und_weight == 1.0
            assert set(cfg.objective.stop_gradient) == set(study.arm(name).probes)
        assert cfgs["frozen-init"].train.stages[0].freeze == TRUNK
        assert all(not c.train.stages[0].freeze for n, c in cfgs.items() if n != "frozen-init")
        assert cfgs["und-only"].model == ref.model  # same init for a seed
        assert cfgs["pixel-vit"].model.vae.kind == "pixels"
    assert len(study.seeds) >= 3


def _train_loader(cfg):
    """The loader the engine trains the run on (its task's, ordered by ``train.seed``)."""
    stage = dataclasses.replace(cfg.train.stages[0], resolution=32)
    return cfg.build_task().build_loader(stage, 4, 0, 1)


def test_arms_see_the_same_samples():
    """For a seed, every arm's loader yields the same keys in the same order."""
    study = _study()
    keys = {}
    for arm in study.arms:
        cfg = arm_run_config(study, arm, 1)
        it = iter(_train_loader(cfg))
        keys[arm.name] = [k for _ in range(3) for k in next(it)["key"]]
    assert len({tuple(v) for v in keys.values()}) == 1
    other = arm_run_config(study, study.arms[0], 2)
    it = iter(_train_loader(other))
    assert [k for _ in range(3) for k in next(it)["key"]] != keys["both"]  # seeds differ


def test_pixel_vit_keeps_the_token_grid_and_has_no_vae():
    latent = model_config("ov3-mu")
    pixel = pixel_vit(latent)
    assert pixel.pixel_patch == latent.pixel_patch == 16
    assert pixel.encoder.width == latent.encoder.width and pixel.encoder.in_channels == 3
    model = OpenVision3(pixel)
    assert not list(model.vae.parameters())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert model.vae.encode(x) is x
    tokens = model.encode(x)
    assert tokens.shape == OpenVision3(latent).encode(x).shape == (2, 16, latent.encoder.width)
    assert model.reconstruct(x).shape == x.shape
