"""The CUDA-only speed paths: bf16 training step, compiled and channels_last VAE, fused AdamW,
and ``ov3 bench train``. Marked ``gpu`` (skipped without CUDA); run by ``scripts/gpu_check.sh``.
Tiny models (``ov3-mu``, the tiny VAE) so the whole file takes about a minute with compiles.
"""

import copy
import dataclasses

import pytest
import torch

from openvision3.configs import get_preset
from openvision3.models.vae import FrozenVAE
from openvision3.ov3.bench import TrainBenchConfig, bench_train
from openvision3.ov3.speed import channels_last_vae, compile_vae
from openvision3.train.optim import OptimConfig, build_optimizer
from openvision3.train.trainer import synthetic_engine

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return FrozenVAE.from_config().to(CUDA)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(4, 3, 64, 64, device=CUDA) * 2 - 1


@pytest.fixture
def no_tf32():
    """fp32 comparisons without TF32 convolutions (on by default for cuDNN), so 1e-3 is loose."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def _decode_fwd_bwd(vae: FrozenVAE, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = latents.detach().clone().requires_grad_(True)
    out = vae.decode(z)
    out.float().square().mean().backward()
    return out.detach(), z.grad


def test_bf16_training_step_is_finite():
    """The engine's step (``Trainer.train_step``) in bf16 autocast on the task's batch."""
    exp = get_preset("demo_smoke")
    exp.train.stages = [dataclasses.replace(exp.train.stages[-1], resolution=64, batch_size=4)]
    exp.train.device, exp.train.precision, exp.train.optim.grad_clip = "cuda", "auto", 1.0
    trainer, batch = synthetic_engine(exp, CUDA)
    assert trainer._bf16()  # precision auto: bf16 autocast on CUDA
    for _ in range(2):
        loss = trainer.train_step(batch)["loss"]
        assert torch.isfinite(loss)
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_compiled_vae_matches_eager(vae, images, no_tf32):
    eager = copy.deepcopy(vae)
    compile_vae(vae)
    ref, got = eager.encode(images), vae.encode(images)
    assert rel_error(got, ref) < 1e-3
    out_ref, grad_ref = _decode_fwd_bwd(eager, ref)
    out, grad = _decode_fwd_bwd(vae, ref)
    assert rel_error(out, out_ref) < 1e-3 and rel_error(grad, grad_ref) < 1e-3


def test_channels_last_vae_matches_default(vae, images, no_tf32):
    default = copy.deepcopy(vae)
    channels_last_vae(vae)
    weight = vae.vae.encoder.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    ref, got = default.encode(images), vae.encode(images)
    assert rel_error(got, ref) < 1e-3
    out_ref, grad_ref = _decode_fwd_bwd(default, ref)
    out, grad = _decode_fwd_bwd(vae, ref)
    assert rel_error(out, out_ref) < 1e-3 and rel_error(grad, grad_ref) < 1e-3


def test_fused_adamw_matches_foreach():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)).to(CUDA)
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, OptimConfig(), lr=1e-3)  # fused=None: fused on CUDA
    foreach = build_optimizer(twin, OptimConfig(fused=False), lr=1e-3)
    assert fused.param_groups[0]["fused"] and not foreach.param_groups[0]["fused"]
    x = torch.randn(8, 64, device=CUDA)
    for _ in range(3):
        for net, opt in ((model, fused), (twin, foreach)):
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()
    # Same math, different rounding: where a gradient is tiny, m / (sqrt(v) + eps) amplifies
    # it; 5% of one step's size (lr) bounds that (CPU fused vs foreach differ by ~1.6e-5).
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)


def test_bench_train_runs(tmp_path):
    cfg = TrainBenchConfig(
        preset="demo_smoke",
        resolution=64,
        batch_size=4,
        steps=2,
        warmup=1,
        component_steps=1,
        compile=False,  # the compiled path is timed by gpu_check.sh's full-size runs
        out=str(tmp_path / "train.json"),
    )
    result = bench_train(cfg)
    assert result["complete"] and result["precision"] == "bf16 autocast"
    assert result["ceiling_dtype"] == "bfloat16" and result["matmul_ceiling_tflops"] > 10
    fast = result["modes"]["fast"]
    assert fast["options"]["fused_adamw"] and fast["options"]["channels_last_vae"]
    for mode in result["modes"].values():
        assert mode["loss_finite"] and 0 < mode["mfu"] <= 1 and mode["peak_memory_gib"] > 0
        assert all(c["ms"] > 0 for c in mode["components"])
