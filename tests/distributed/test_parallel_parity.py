"""DDP and FSDP2 (plain, and with activation checkpointing + per-block compile) over 2 gloo
ranks give the loss and the gradients of 1 process on the same global batch (fp32, ov3-mu);
FSDP2 with the bf16 mixed-precision policy under autocast comes close (bf16 rounding).

Exactness: the two random parts of the training forward are switched off so that a sample's
loss does not depend on which rank draws its noise: decoder noise (``noise_tau = 0``) and
caption-token dropping (``keep_ratio = 1``). Every caption has the same number of real tokens,
because the caption loss is a token mean per process (equal counts make the mean of the rank
means the global mean); the contrastive loss gathers negatives with gradient, so its rank
mean is the 1-process loss. Gradients are compared after clipping to a small norm, which
checks that FSDP2 clips with the global (not a per-shard) norm.
"""

import os

import pytest
import torch
import torch.multiprocessing as mp

from openvision3.configs import get_preset
from openvision3.distributed.parallelize import clip_grad_norm_, is_sharded, parallelize
from openvision3.losses.objective import Objective
from openvision3.models.openvision3 import OpenVision3
from openvision3.ov3.task import prune_model_config
from openvision3.tokenizer import EOT_ID, PAD_ID, SOT_ID
from openvision3.train.checkpoint import clean_key
from tests.dist_utils import free_port, worker_env

B, RES, L = 4, 32, 16  # global batch, pixels, text / caption length
CLIP = 0.05  # below the gradient norm of the first step: clipping is active
FP32, BF16 = torch.float32, torch.bfloat16
MODES = {  # name: (parallel, activation checkpointing, compile, FSDP2 param dtype)
    "ddp": ("ddp", False, False, FP32),
    "fsdp": ("fsdp", False, False, FP32),
    "fsdp_ac_compile": ("fsdp", True, True, FP32),
    "ddp_ac_compile": ("ddp", True, True, FP32),
    # bf16 compute copies under autocast (the CUDA recipe), fp32 shards and gradients
    "fsdp_bf16": ("fsdp", False, False, BF16),
}


def _cfg():
    cfg = get_preset("demo_smoke")
    cfg.model.decoder.noise_tau = 0.0  # no per-rank decoder noise (see the module docstring)
    cfg.model.caption.keep_ratio = 1.0  # no random caption-token dropping
    return cfg


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(B, 3, RES, RES, generator=g) * 2 - 1
    words = torch.randint(1, 40000, (B, L), generator=g)
    text = torch.where(torch.arange(L) < 6 + torch.arange(B)[:, None], words, PAD_ID)
    text[:, 0] = SOT_ID
    text[torch.arange(B), 5 + torch.arange(B)] = EOT_ID  # text lengths may differ
    caption = torch.randint(1, 40000, (B, L), generator=g)
    caption[:, 0], caption[:, -1] = SOT_ID, EOT_ID  # all L tokens real in every row
    return {"images": images, "text": text, "caption": caption}


def _model(cfg) -> OpenVision3:
    torch.manual_seed(0)
    return OpenVision3(prune_model_config(cfg.model, cfg.objective))


def _step(train_model, model, objective, batch) -> dict:
    """One forward / backward / clip; returns the loss, the clip norm and full clipped grads."""
    out = train_model(batch, reconstruction=True, contrastive=True, caption=True)
    loss, _ = objective(out)
    loss.backward()
    norm = clip_grad_norm_(model.parameters(), CLIP)
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[clean_key(name)] = g.detach().clone()
    return {"loss": loss.detach(), "norm": norm.detach(), "grads": grads}


def _worker(rank, world, port, out):
    worker_env(rank, world, port)
    torch.distributed.init_process_group("gloo")
    cfg = _cfg()
    objective = Objective(cfg.objective)
    half = {k: v.chunk(world)[rank] for k, v in _batch().items()}
    results = {}
    for name, (parallel, ac, compile, dtype) in MODES.items():
        model = _model(cfg)
        train_model = parallelize(
            model,
            world,
            torch.device("cpu"),
            compile,
            parallel=parallel,
            activation_checkpointing=ac,
            param_dtype=dtype,
            compile_backend="aot_eager",  # the compile path without a C++ toolchain
        )
        names = [n for n, _ in model.named_parameters()]
        assert any("_checkpoint_wrapped_module" in n for n in names) == ac, name
        assert any("_orig_mod" in n for n in names) == compile, name
        assert is_sharded(model) == (parallel == "fsdp"), name
        with torch.autocast("cpu", BF16, enabled=dtype == BF16):
            r = _step(train_model, model, objective, half)
        assert {p.dtype for p in model.parameters()} == {FP32}, name
        torch.distributed.all_reduce(r["loss"])
        r["loss"] /= world  # DDP / FSDP average gradients: the global loss is the rank mean
        results[name] = r
    if rank == 0:
        torch.save(results, os.path.join(out, "results.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_ddp_and_fsdp_match_one_process(tmp_path):
    cfg = _cfg()
    model = _model(cfg)
    ref = _step(model, model, Objective(cfg.objective), _batch())
    assert ref["norm"] > 2 * CLIP  # clipping changes the gradients
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    assert set(results) == set(MODES)
    for name, r in results.items():
        assert r["grads"].keys() == ref["grads"].keys(), name
        if MODES[name][3] == BF16:  # bf16 rounding: close, not equal
            torch.testing.assert_close(r["loss"], ref["loss"], rtol=2e-3, atol=0, msg=name)
            torch.testing.assert_close(r["norm"], ref["norm"], rtol=2e-2, atol=0, msg=name)
            flat = lambda d: torch.cat([g.flatten() for g in d.values()])  # noqa: E731
            assert all(g.dtype == FP32 for g in r["grads"].values())
            err = (flat(r["grads"]) - flat(ref["grads"])).norm() / flat(ref["grads"]).norm()
            assert err < 0.05, (name, float(err))
            continue
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(r["norm"], ref["norm"], rtol=1e-4, atol=1e-6, msg=name)
        for k, g in ref["grads"].items():
            torch.testing.assert_close(r["grads"][k], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
