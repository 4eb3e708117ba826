"""Gradient accumulation equals the big batch (contrastive negatives over all of it); the step
keeps its terms on the device and syncs with the host only at log / checkpoint steps."""

import copy
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from openvision3.configs import get_preset
from openvision3.data.loader import DataConfig, build_loader
from openvision3.data.synthetic.world import SyntheticConfig
from openvision3.losses.objective import Objective, ObjectiveConfig
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.ov3.accumulate import forward_backward
from openvision3.ov3.config import OV3StageConfig, peak_lr
from openvision3.train.accumulate import StepTerms, split_batch
from openvision3.train.checkpoint import find_latest
from openvision3.train.metrics import read_metrics
from openvision3.train.trainer import Trainer
from tests.dist_utils import free_port, worker_env

BRANCHES = dict(reconstruction=True, contrastive=True, caption=True)


def no_autocast():
    return torch.autocast("cpu", enabled=False)


def tiny_model(noise_tau: float = 0.0) -> OpenVision3:
    """ov3-mu; decoder noise off so that the big and the accumulated batch see the same
    computation (with noise, each micro-batch draws its own, which is a different sample)."""
    cfg = model_config("ov3-mu")
    cfg.decoder.noise_tau = noise_tau
    torch.manual_seed(0)
    return OpenVision3(cfg).train()


def synthetic_batch(n: int = 8) -> dict:
    data = DataConfig(
        text_context=32, caption_context=32, synthetic=SyntheticConfig(train_size=64, val_size=8)
    )
    return next(iter(build_loader(data, "train", 32, n)))


def grads_and_terms(model, batch, k, objective=None):
    model = copy.deepcopy(model)
    objective = objective or Objective(ObjectiveConfig())
    terms = forward_backward(model, model, objective, dict(batch), k, BRANCHES, no_autocast)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return grads, terms


def test_split_batch_slices_tensors_and_lists():
    batch = {"images": torch.arange(6), "key": list("abcdef"), "text": torch.arange(12).view(6, 2)}
    micro = split_batch(batch, 3)
    assert [m["key"] for m in micro] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert torch.equal(torch.cat([m["text"] for m in micro]), batch["text"])
    with pytest.raises(ValueError, match="accum_steps"):
        split_batch(batch, 4)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_the_big_batch(k):
    model, batch = tiny_model(), synthetic_batch(8)
    assert "text_2" in batch  # both contrastive views take part
    tokens = (batch["caption"][:, 1:] != 0).sum(1).view(k, -1).sum(1)
    assert len(set(tokens.tolist())) > 1  # micro-batches with unequal caption token counts
    big_grads, big_terms = grads_and_terms(model, batch, 1)
    grads, terms = grads_and_terms(model, batch, k)
    assert terms.keys() == big_terms.keys()
    for name in big_terms:
        torch.testing.assert_close(terms[name], big_terms[name], rtol=1e-5, atol=1e-6)
    assert all(g is not None and torch.isfinite(g).all() for g in big_grads.values())
    for name, g in big_grads.items():
        # atol relative to the tensor's scale: an entry that is a sum of cancelling terms
        # (text.pos_embed) differs by float32 summation order (~1e-6 of the largest entry),
        # while a wrong weighting of a micro-batch is off by O(1) of the scale.
        atol = 1e-5 * float(g.abs().max())
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=atol, msg=name)
    # The temperature's gradient is counted once (not k times as a naive sum would).
    torch.testing.assert_close(grads["logit_scale"], big_grads["logit_scale"])


def test_accumulation_without_contrastive_branch():
    model, batch = tiny_model(), synthetic_batch(8)
    objective = Objective(ObjectiveConfig(contrastive_weight=0.0))
    branches = dict(BRANCHES, contrastive=False)
    out = {}
    for k in (1, 2):
        m = copy.deepcopy(model)
        terms = forward_backward(m, m, objective, dict(batch), k, branches, no_autocast)
        out[k] = (terms, {n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(out[2][0]["loss"], out[1][0]["loss"])
    for name, g in out[1][1].items():
        torch.testing.assert_close(out[2][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_both_passes_of_a_micro_batch_draw_the_same_randomness():
    model, batch = tiny_model(noise_tau=0.8), synthetic_batch(4)
    seen = []

    def noisy(module, args, out):  # a random op inside the towers (dropout-like)
        out = out + 0.1 * torch.randn_like(out)
        seen.append(out.detach().clone())
        return out

    model.encoder.register_forward_hook(noisy)
    forward_backward(model, model, Objective(ObjectiveConfig()), batch, 2, BRANCHES, no_autocast)
    assert len(seen) == 4  # pass 1: micro 0, 1; pass 2: micro 0, 1
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])
    assert not torch.equal(seen[0], seen[1])


def test_pixel_loss_fraction_decodes_a_subset():
    model, batch = tiny_model(), synthetic_batch(8)
    calls = []
    model.vae.vae.decoder.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    out = model(batch, pixel_fraction=0.25)
    assert calls == [2] and out["images_hat"].shape == out["images"].shape == (2, 3, 32, 32)
    assert torch.equal(out["images"], batch["images"][:2])
    assert out["latents_hat"].shape[0] == 8  # the latent term keeps the whole batch
    loss, terms = Objective(ObjectiveConfig(pixel_loss_fraction=0.25))(out)
    assert torch.isfinite(loss) and terms["pixel_l1"] > 0
    with pytest.raises(ValueError, match="pixel_loss_fraction"):
        ObjectiveConfig(pixel_loss_fraction=0.0)


def test_step_terms_find_the_first_non_finite_step():
    window = StepTerms()
    for step, loss in enumerate([1.0, 3.0, float("nan"), float("inf"), 2.0]):
        window.add(step, {"loss": torch.tensor(loss), "rec": torch.tensor(step * 1.0)})
        if step == 1:
            assert window.non_finite() is None
            assert window.mean() == {"loss": 2.0, "rec": 0.5}
    message = window.non_finite()
    assert message.startswith("non-finite loss at step 2:") and "'rec': 2.0" in message


def smoke(run_dir, **train):
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run_dir)
    cfg.model.decoder.noise_tau = 0.0  # same computation with and without accumulation
    cfg.train.stages = [OV3StageConfig(resolution=32, steps=2, batch_size=8, lr=peak_lr(0.05, 8))]
    cfg.train.ckpt_every, cfg.train.log_every, cfg.train.stop_at = 2, 1, 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_trainer_with_accumulation_matches_the_big_batch(tmp_path):
    for k in (1, 4):
        cfg = smoke(tmp_path / f"k{k}", accum_steps=k)
        # Adam moves an entry by ~lr whatever its gradient's size, so float noise on a
        # near-zero gradient (summation order differs between k = 1 and k = 4) would become a
        # full step of either sign; eps = 1e-3 damps steps of gradients far below it and
        # leaves the real ones sign-like.
        cfg.train.optim.eps = 1e-3
        assert Trainer(cfg).fit() == {"stopped_at": 2}
    a = load_file(str(find_latest(tmp_path / "k1") / "model.safetensors"))
    b = load_file(str(find_latest(tmp_path / "k4") / "model.safetensors"))
    # 1e-4 is well below the 1.5e-3 learning rate. The gradient itself is compared through
    # grad_norm below and exactly in the tests above.
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=name)
    rows = [[r for r in read_metrics(tmp_path / f"k{k}") if "loss" in r] for k in (1, 4)]
    for r1, r4 in zip(*rows):
        for key in ("loss", "contrastive", "caption", "rec", "grad_norm"):
            assert r4[key] == pytest.approx(r1[key], rel=1e-4), key


def test_step_syncs_with_the_host_only_at_log_steps(tmp_path, monkeypatch):
    """Tensor -> Python conversions made by the trainer's own code (the step, the terms
    window) happen only at the log / checkpoint step, not in every step. (The micro-batch
    seeds come from the CPU generator: a host-side draw, never a device sync.)"""
    trainer = Trainer(smoke(tmp_path, log_every=3, ckpt_every=3, stop_at=3, accum_steps=2))
    trainer.cfg.train.stages[0].steps = 3
    own = ("train/trainer.py", "train/accumulate.py", "ov3/accumulate.py", "ov3/task.py")
    syncs = []
    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name):
            code = sys._getframe(1).f_code
            if (
                code.co_filename.replace(os.sep, "/").endswith(own)
                and code.co_name != "micro_seeds"
            ):
                syncs.append((trainer.step, _name))
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    trainer.fit()
    assert syncs and {step for step, _ in syncs} == {3}, syncs


def _ddp_worker(rank, world, port, out_dir):
    worker_env(rank, world, port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel

    batch = synthetic_batch(8)
    mine = {k: v[rank * 4 : (rank + 1) * 4] for k, v in batch.items()}
    grads = {}
    for k in (1, 2):
        model = tiny_model()
        ddp = DistributedDataParallel(model)
        objective = Objective(ObjectiveConfig())
        forward_backward(ddp, model, objective, dict(mine), k, BRANCHES, no_autocast)
        grads[k] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_two_ranks_accumulation_equals_two_ranks_big_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, g in grads[1].items():
            torch.testing.assert_close(grads[2][name], g, rtol=1e-4, atol=1e-6, msg=name)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)[2] for r in range(2))
    assert all(torch.equal(r0[n], r1[n]) for n in r0)  # synced once, at the last micro-batch
